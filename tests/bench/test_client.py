"""The load client against our live server on loopback (`hyperflexis serve`, two instances of the
tiny test checkpoint), plus its command line's argument checks.

One server serves the module. It answers 503 once 4 requests wait for a first token
(`--max-queued 4`), so a burst is partly rejected while a light load is not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperflexis.bench.client import BenchRun, ClientConfig, run_benchmark
from hyperflexis.bench.prompts import PromptFactory
from hyperflexis.bench.report import bench_summary
from hyperflexis.bench.server_process import ServerProcess
from hyperflexis.cli import main
from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads import RequestSpec, Workload, make_workload

MAX_QUEUED = 4
SIMULATE_KEYS = (
    "num_requests",
    "num_attained",
    "num_completed",
    "num_rejected",
    "attainment",
    "attainment_by_class",
    "counts_by_class",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "goodput_rps",
    "instance_seconds",
    "duration_s",
)
VLLM_KEYS = (
    "duration",
    "completed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    *(
        f"{stat}_{name}_ms"
        for name in ("ttft", "tpot", "itl", "e2el")
        for stat in ("mean", "median", "std", "p99")
    ),
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "generated_texts",
    "errors",
)
CLASSES = SLOClasses()


@pytest.fixture(scope="module")
def server(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = dict(os.environ, HYPERFLEXIS_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))
    args = ["--model", str(tiny_llama_dir), "--instances", "2", "--policy", "fcfs"]
    args += ["--dispatch", "round-robin", "--max-queued", str(MAX_QUEUED), "--threads", "1"]
    with ServerProcess(args, env=env, ready_timeout_s=60.0) as process:
        yield process.url


def _workload(lengths: list[tuple[int, int]], gap_s: float, classes: list[str]) -> Workload:
    return make_workload(
        RequestSpec(f"r{i:02d}", i * gap_s, prompt, output, classes[i % len(classes)])
        for i, (prompt, output) in enumerate(lengths)
    )


def _config(url: str, **changes: object) -> ClientConfig:
    fields: dict[str, object] = {"base_url": url, "model": "tiny", "show_progress": False}
    fields.update(changes)
    return ClientConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def light_run(server: str) -> BenchRun:
    lengths = [(8 + 7 * i, 4 + i) for i in range(8)]
    workload = _workload(lengths, 0.15, ["interactive", "standard", "batch"])
    return run_benchmark(workload, CLASSES, _config(server, model=_model_id(server)))


def _model_id(url: str) -> str:
    import httpx

    return str(httpx.get(f"{url}/v1/models").json()["data"][0]["id"])


def test_summary_has_the_simulate_and_vllm_keys(light_run: BenchRun) -> None:
    summary = bench_summary(light_run, instance_seconds=2.0)
    for key in (*SIMULATE_KEYS, *VLLM_KEYS):
        assert key in summary, key
    assert summary["num_requests"] == 8
    assert summary["instance_seconds"] == 2.0
    assert summary["completed"] == summary["num_completed"] >= 6  # 503s at most past 4 queued
    assert len(summary["input_lens"]) == len(summary["errors"]) == 8
    assert set(summary["attainment_by_class"]) == {"batch", "interactive", "standard"}
    assert 0 < summary["median_ttft_ms"] <= summary["median_e2el_ms"]
    assert summary["total_output_tokens"] == sum(summary["output_lens"])
    json.dumps(summary)  # serialisable as is


def test_records_are_sane(light_run: BenchRun) -> None:
    for result in light_run.results:
        record, spec = result.record, result.spec
        assert record.status in ("completed", "rejected")
        if record.status == "rejected":
            assert result.http_status == 503
            continue
        assert result.http_status == 200 and result.error == ""
        assert result.server_overhead_ms is not None and result.server_overhead_ms >= 0
        assert record.ttft_s is not None and record.e2e_s is not None
        assert 0 < record.ttft_s <= record.e2e_s
        assert record.arrival_s >= spec.arrival_s  # sent at its arrival time, never early
        assert record.num_output_tokens == spec.output_len  # ignore_eos honoured
        assert result.prompt_tokens == spec.prompt_len  # one token per word plus BOS
        assert len(record.inter_token_latencies_s or ()) <= spec.output_len - 1
        assert result.generated_text
        assert record.slo_class == spec.slo_class
        assert record.ttft_slo_s == CLASSES[spec.slo_class].ttft_s


def test_chat_endpoint_streams_the_requested_lengths(server: str) -> None:
    workload = _workload([(10, 5), (20, 3)], 0.2, ["standard"])
    config = _config(server, model=_model_id(server), endpoint="chat")
    run = run_benchmark(workload, CLASSES, config, PromptFactory())
    for result in run.results:
        assert result.record.status == "completed", result.error
        assert result.record.num_output_tokens == result.spec.output_len


def test_a_burst_past_max_queued_is_rejected_with_retry_after(server: str) -> None:
    burst = 30  # long prompts, many at once: the queue fills however the machine is loaded
    workload = _workload([(200, 8)] * burst, 0.0, ["standard"])
    run = run_benchmark(workload, CLASSES, _config(server, model=_model_id(server)))
    rejected = [r for r in run.results if r.record.status == "rejected"]
    completed = [r for r in run.results if r.record.status == "completed"]
    assert rejected and completed
    assert len(rejected) + len(completed) == burst
    for result in rejected:
        assert result.http_status == 503
        assert result.retry_after_s is not None and result.retry_after_s > 0
        assert not result.record.attained and result.record.first_token_s is None
    summary = bench_summary(run)
    assert summary["num_rejected"] == len(rejected)
    assert summary["attainment"] <= len(completed) / burst
    assert summary["output_lens"].count(0) == len(rejected)


def test_unknown_model_fails_every_request(server: str) -> None:
    run = run_benchmark(_workload([(5, 2)], 0.0, ["batch"]), CLASSES, _config(server))
    (result,) = run.results
    assert result.record.status == "failed" and result.http_status == 404
    assert "model" in result.error


def test_cli_writes_summary_jsonl_and_plot(server: str, tmp_path: Path) -> None:
    out, jsonl, plot = tmp_path / "r.json", tmp_path / "r.jsonl", tmp_path / "r.png"
    code = main(
        [
            "bench",
            "--base-url",
            f"{server}/v1",
            "--model",
            _model_id(server),
            "--dataset",
            "random",
            "--input-len",
            "uniform:lo=8,hi=32",
            "--output-len",
            "4",
            "--rate",
            "8",
            "--num-requests",
            "5",
            "--slo-mix",
            "interactive:1,batch:1",
            "--instances",
            "2",
            "--out",
            str(out),
            "--jsonl",
            str(jsonl),
            "--plot",
            str(plot),
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["num_requests"] == 5 and summary["num_instances"] == 2
    assert summary["instance_seconds"] == pytest.approx(2 * summary["duration_s"])
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["request_id"] for r in rows] == sorted(r["request_id"] for r in rows)
    assert len(rows) == 5
    for row in rows:
        assert row["slo_class"] in ("interactive", "batch")
        if row["status"] == "completed":
            assert row["output_tokens"] == 4
            assert row["ttft_s"] <= row["e2e_s"]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_takes_the_servers_instance_seconds_without_instances(
    server: str, tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    args = ["bench", "--base-url", server, "--model", _model_id(server), "--dataset", "random"]
    args += ["--input-len", "8", "--output-len", "4", "--rate", "8", "--num-requests", "4"]
    code = main([*args, "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads(out.read_text())
    cost = summary["server_cost"]
    # Two instances served from the clock's start (prompts built) to the last request's end.
    assert 2 * summary["duration_s"] <= cost["instance_seconds"] <= 2 * summary["wall_s"] + 1.0
    assert cost["instance_seconds_by_role"]["mixed"] == cost["instance_seconds"]
    assert summary["instance_seconds"] == cost["instance_seconds"]
    assert cost["cost_usd"] == 0.0  # no --price-per-hour
    assert cost["scaling_events"] == {} and cost["num_role_flips"] == 0


def test_cli_exits_1_when_every_request_fails(tmp_path: Path, unused_port: int) -> None:
    code = main(
        [
            "bench",
            "--base-url",
            f"http://127.0.0.1:{unused_port}",
            "--model",
            "m",
            "--dataset",
            "random",
            "--rate",
            "100",
            "--num-requests",
            "2",
            "--out",
            str(tmp_path / "r.json"),
            "--quiet",
        ]
    )
    assert code == 1
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["num_failed"] == 2 and all(summary["errors"])


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BASE = ["bench", "--base-url", "http://127.0.0.1:1", "--model", "m", "--out", "x.json"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "random"], "--rate"),
        (["--dataset", "random", "--rate", "1", "--slo-mix", "gold:1"], "gold"),
        (["--trace", "no/such.csv"], "--trace"),
        (["--dataset", "random", "--rate", "0"], "--rate"),
        (["--dataset", "random", "--rate", "1", "--num-requests", "0"], "--num-requests"),
        (["--dataset", "random", "--rate", "1", "--max-concurrency", "0"], "max_concurrency"),
        (["--dataset", "random", "--rate", "1", "--input-len", "zipf:a=1"], "zipf"),
    ],
)
def test_cli_rejects_bad_arguments(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_needs_exactly_one_request_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*BASE, "--dataset", "random", "--trace", "t.csv"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(BASE)
    assert "--trace" in capsys.readouterr().err


def test_bad_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="base_url"):
        ClientConfig(base_url="localhost:8000", model="m")


def test_prompts_are_exact_with_a_token_counter() -> None:
    factory = PromptFactory(lambda text: 1 + 2 * len(text.split()))  # BOS + two tokens a word
    for num_tokens in (3, 9, 101):
        text, count = factory.make(num_tokens, offset=num_tokens)
        assert count == num_tokens == 1 + 2 * len(text.split())
    text, count = factory.make(10)  # even counts are out of reach: the closest below
    assert count == 9
    estimated = PromptFactory()
    text, count = estimated.make(50, offset=3)
    assert count == 50 and len(text.split()) == 49
    assert estimated.make(50, offset=4)[0] != text  # requests do not share a prompt
