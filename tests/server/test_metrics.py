"""`ServerMetrics`: vLLM's series and meanings, HyperFlexis's per-class series, instance gauges
that go away with their instance, and one registry per server."""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.process
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperflexis.backends.messages import OutputDelta
from hyperflexis.cluster import LoadSnapshot
from hyperflexis.core.slo import SLO
from hyperflexis.perf import StepFeatures
from hyperflexis.server.metric_families import one_two_five_buckets
from hyperflexis.server.metrics import ServerMetrics
from tests.server.scrape import has, samples, value

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
SLO_STANDARD = SLO(ttft_s=1.0, tpot_s=0.05, priority=1, class_name="standard")


@dataclass
class FakeHandle:
    instance_id: str
    snapshot: LoadSnapshot | None
    num_preemptions: int = 0
    correction_factor: float = 1.0


def _handle(instance_id: str, num_free_blocks: int = 6, num_running: int = 2) -> FakeHandle:
    snapshot = LoadSnapshot(
        instance_id, "mixed", 0.0, 8, num_free_blocks, 16, num_running, 1, StepFeatures(),
        math.inf, math.inf, (),
    )  # fmt: skip
    return FakeHandle(instance_id, snapshot)


def _metrics(*engines: str) -> ServerMetrics:
    metrics = ServerMetrics("tiny", ("interactive", "standard"), max_model_len=100)
    for engine in engines:
        metrics.observe_instance(_handle(engine))  # type: ignore[arg-type]
    return metrics


def _text(metrics: ServerMetrics) -> str:
    return metrics.render(0)[0].decode()


def _finished(reason: str = "length", **fields: object) -> OutputDelta:
    base: dict[str, object] = {"num_prompt_tokens": 7, "num_output_tokens": 11}
    return OutputDelta("r", [], "", reason, **{**base, **fields})  # type: ignore[arg-type]


def test_every_series_has_model_name_and_none_uses_the_instance_label() -> None:
    metrics = _metrics("instance-0")
    metrics.on_first_token("instance-0", "standard", 0.2, 7)
    metrics.on_finished("instance-0", SLO_STANDARD, _finished(attained=True), 1.0)
    metrics.observe_overhead(0.001)
    found = samples(_text(metrics))
    assert found and all(s.labels.get("model_name") == "tiny" for s in found)
    assert not any("instance" in s.labels for s in found)
    running = [s for s in found if s.name == "vllm:num_requests_running"]
    assert [(s.labels["engine"], s.value) for s in running] == [("instance-0", 2.0)]


def test_inter_token_latency_is_one_observation_per_token() -> None:
    metrics = _metrics("a")
    metrics.on_tokens("a", 1, None)  # the first token: no gap
    metrics.on_tokens("a", 1, 0.02)
    metrics.on_tokens("a", 3, 0.06)  # three tokens at once: three gaps of 0.02
    text = _text(metrics)
    for name in ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"):
        assert value(text, f"{name}_count") == 4
        assert value(text, f"{name}_sum") == pytest.approx(0.08)
        assert value(text, f"{name}_bucket", le="0.02") == 4
    assert value(text, "vllm:generation_tokens_total", engine="a") == 5


def test_request_phases_come_from_the_instance_durations() -> None:
    metrics = _metrics("a")
    delta = _finished(queue_s=0.1, ttft_s=0.3, tpot_s=0.01, attained=True)
    metrics.on_finished("a", SLO_STANDARD, delta, 0.45)
    text = _text(metrics)
    sums = {
        phase: value(text, f"vllm:request_{phase}_time_seconds_sum")
        for phase in ("queue", "prefill", "decode", "inference")
    }
    assert sums == pytest.approx({"queue": 0.1, "prefill": 0.2, "decode": 0.1, "inference": 0.3})
    assert value(text, "vllm:e2e_request_latency_seconds_sum") == pytest.approx(0.45)
    assert value(text, "vllm:request_time_per_output_token_seconds_sum") == pytest.approx(0.01)
    assert value(text, "vllm:request_prompt_tokens_sum") == 7
    assert value(text, "vllm:request_generation_tokens_bucket", le="10.0") == 0
    assert value(text, "vllm:request_generation_tokens_bucket", le="20.0") == 1
    assert value(text, "vllm:request_success_total", finished_reason="length") == 1
    assert value(text, "vllm:request_success_total", finished_reason="stop") == 0


def test_misses_are_counted_by_cause() -> None:
    metrics = _metrics("a")
    outcomes = [
        _finished(ttft_s=0.5, tpot_s=0.01, attained=True),
        _finished(ttft_s=2.0, tpot_s=0.01, attained=False),  # late first token
        _finished(ttft_s=2.0, tpot_s=0.09, attained=False),  # both late: the first counts
        _finished(ttft_s=0.5, tpot_s=0.09, attained=False),  # slow tokens only
        _finished("rejected"),
        _finished("error"),
    ]
    for delta in outcomes:
        metrics.on_finished("a", SLO_STANDARD, delta, 1.0)
    metrics.on_aborted("a", "standard")
    metrics.on_rejected("interactive", "dispatch")
    text = _text(metrics)
    missed = {
        s.labels["cause"]: s.value
        for s in samples(text)
        if s.name == "hyperflexis:requests_missed_total" and s.labels["slo_class"] == "standard"
    }
    assert missed == {"ttft": 2, "tpot": 1, "rejected": 1, "aborted": 1, "error": 1}
    assert value(text, "hyperflexis:requests_attained_total", slo_class="standard") == 1
    rejected = "hyperflexis:requests_rejected_total"
    assert value(text, rejected, slo_class="standard", reason="instance") == 1
    assert value(text, rejected, slo_class="interactive", reason="dispatch") == 1
    assert value(text, "hyperflexis:time_per_output_token_seconds_count") == 4
    reasons = {"length": 4, "rejected": 1, "error": 1, "abort": 1, "stop": 0}
    for reason, count in reasons.items():
        assert value(text, "vllm:request_success_total", finished_reason=reason) == count


def test_removing_an_instance_drops_its_gauges_and_keeps_its_totals() -> None:
    metrics = _metrics("a", "b")
    metrics.on_tokens("a", 4, None)
    metrics.remove_instance("a")
    text = _text(metrics)
    for gauge in (
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "hyperflexis:instance_up",
    ):
        assert not has(text, gauge, engine="a") and has(text, gauge, engine="b")
    assert value(text, "vllm:generation_tokens_total", engine="a") == 4
    assert value(text, "vllm:kv_cache_usage_perc", engine="b") == pytest.approx(0.25)


def test_preemptions_count_what_each_report_adds() -> None:
    metrics = _metrics()
    handle = _handle("a")
    for total in (0, 2, 2, 5):
        handle.num_preemptions = total
        metrics.observe_instance(handle)  # type: ignore[arg-type]
    assert value(_text(metrics), "vllm:num_preemptions_total", engine="a") == 5


def test_each_server_has_its_own_registry() -> None:
    first, second = _metrics("a"), _metrics("a")  # same names: no clash
    first.on_tokens("a", 3, None)
    assert value(_text(first), "vllm:generation_tokens_total") == 3
    assert value(_text(second), "vllm:generation_tokens_total") == 0


def test_exposition_follows_the_accept_header() -> None:
    metrics = _metrics("a")
    body, content_type = metrics.render(3)
    assert content_type.startswith("text/plain")
    assert value(body.decode(), "hyperflexis:server_queued_requests") == 3
    body, content_type = metrics.render(3, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


def test_overhead_quantiles() -> None:
    metrics = _metrics()
    assert metrics.overhead_quantiles_ms()["p50"] is None
    for ms in range(1, 101):
        metrics.observe_overhead(ms / 1000)
    quantiles = metrics.overhead_quantiles_ms()
    assert quantiles["count"] == 100 and quantiles["p50"] == 51.0 and quantiles["p99"] == 100.0
    assert value(_text(metrics), "hyperflexis:server_overhead_seconds_count") == 100


def test_token_buckets_run_one_two_five_up_to_the_context() -> None:
    assert one_two_five_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    assert one_two_five_buckets(4) == (1, 2)


def test_docs_list_every_series_with_its_type() -> None:
    """docs/metrics.md's tables name each exported series once, with its Prometheus type."""
    documented = dict(re.findall(r"^\| `([a-z]+:[a-z0-9_]+)` \| (\w+) \|", DOCS.read_text(), re.M))
    exported = {}
    for family in _metrics("a").registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        exported[name] = family.type
    assert documented == exported


@dataclass
class _LoadingHandle:
    """An instance as the cost meter sees it: its process, its role, whether it serves."""

    process: multiprocessing.process.BaseProcess
    role: str
    alive: bool = False  # loading: its process runs, it serves nothing yet
    ready: None = None


def test_a_loading_instance_costs_and_a_stopped_one_does_not() -> None:
    metrics = ServerMetrics("tiny", price_per_hour=36.0)  # one cent per instance-second
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    process.start()
    try:
        handles = [_LoadingHandle(process, "decode"), _LoadingHandle(process, "decode", True)]
        metrics.charge_instances(100.0, handles)  # type: ignore[arg-type]
        metrics.charge_instances(110.0, handles)  # type: ignore[arg-type]
        meter = metrics.pool_cost.meters["decode"]
        assert (meter.instance_seconds("starting"), meter.instance_seconds("active")) == (10, 10)
        process.kill()
        process.join(5)
        # Both held their machines until 120; then the loading one's process has exited, and
        # the serving one is gone: nothing more is charged.
        metrics.charge_instances(120.0, handles[:1])  # type: ignore[arg-type]
        metrics.charge_instances(130.0, handles[:1])  # type: ignore[arg-type]
    finally:
        process.kill()
        process.join(5)
    text = _text(metrics)
    assert value(text, "hyperflexis:instance_seconds_total", role="decode") == 40
    assert value(text, "hyperflexis:cost_usd_total", role="decode") == pytest.approx(0.4)
    assert value(text, "hyperflexis:instance_seconds_total", role="mixed") == 0
