"""SLO metrics: per-request properties, summaries, conservation and rate-sweep figures."""

from __future__ import annotations

import json
import random

import pytest

from hyperflexis.bench.metrics import (
    RequestRecord,
    attainment_at,
    check_conservation,
    goodput_at,
    rate_where_falls_to,
    record_from_request,
    summarize,
)
from hyperflexis.core.outputs import RequestMetrics
from hyperflexis.core.request import FinishReason, Request
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO

SUMMARY_KEYS = {
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
    "num_attained_per_token",
    "attainment_per_token",
    "attainment_per_token_by_class",
    "max_itl_s",
    "goodput_per_token_rps",
}


def record(
    request_id: str,
    ttft_s: float | None = 0.1,
    num_output_tokens: int = 11,
    tpot_s: float = 0.01,
    status: str = "completed",
    slo_class: str = "standard",
    arrival_s: float = 1.0,
) -> RequestRecord:
    """A record whose first token comes `ttft_s` after arrival and the rest every `tpot_s`."""
    first = None if ttft_s is None else arrival_s + ttft_s
    finish = None if first is None else first + tpot_s * (num_output_tokens - 1)
    return RequestRecord(
        request_id=request_id,
        slo_class=slo_class,
        priority=1,
        ttft_slo_s=0.5,
        tpot_slo_s=0.05,
        arrival_s=arrival_s,
        first_token_s=first,
        finish_s=finish,
        num_prompt_tokens=100,
        num_output_tokens=num_output_tokens if first is not None else 0,
        status=status,  # type: ignore[arg-type]
    )


def test_per_request_latencies() -> None:
    r = record("a", ttft_s=0.2, num_output_tokens=11, tpot_s=0.03)
    assert r.ttft_s == pytest.approx(0.2)
    assert r.tpot_s == pytest.approx(0.03)
    assert r.e2e_s == pytest.approx(0.5)
    assert record("b", num_output_tokens=1).tpot_s is None
    assert record("c", ttft_s=None, status="rejected").ttft_s is None


@pytest.mark.parametrize(
    ("r", "attained"),
    [
        (record("ok"), True),
        (record("at-limits", ttft_s=0.5, tpot_s=0.05), True),
        (record("slow-first", ttft_s=0.6), False),
        (record("slow-stream", tpot_s=0.06), False),
        (record("one-token", num_output_tokens=1, ttft_s=0.4), True),  # no TPOT to miss
        (record("rejected", ttft_s=None, status="rejected"), False),
        (record("aborted-fast", status="aborted"), False),
        (record("failed", status="failed"), False),
    ],
)
def test_attained(r: RequestRecord, attained: bool) -> None:
    assert r.attained is attained


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="completed request needs"):
        record("x", ttft_s=None, status="completed")
    with pytest.raises(ValueError, match="'status'"):
        record("x", status="lost")
    with pytest.raises(ValueError, match="'first_token_s'"):
        RequestRecord("x", "c", 0, 1.0, 1.0, 5.0, 4.0, 6.0, 1, 1, "completed")
    with pytest.raises(ValueError, match="'finish_s'"):
        RequestRecord("x", "c", 0, 1.0, 1.0, 5.0, 6.0, 5.5, 1, 2, "completed")
    with pytest.raises(ValueError, match="'ttft_slo_s'"):
        RequestRecord("x", "c", 0, 0.0, 1.0, 5.0, None, None, 1, 0, "rejected")
    itl = RequestRecord("x", "c", 0, 1.0, 1.0, 0.0, 1.0, 2.0, 1, 3, "completed", [0.5, 0.5])
    assert itl.inter_token_latencies_s == (0.5, 0.5)


def sample_records() -> list[RequestRecord]:
    # Ten completed requests with ttft 0.1 .. 1.0 (classes alternating), of which those up to
    # 0.5 attain; plus one rejected and one aborted, both 'batch'.
    records = [
        record(f"r{i}", ttft_s=i / 10, slo_class="interactive" if i % 2 else "standard")
        for i in range(1, 11)
    ]
    records.append(record("rej", ttft_s=None, status="rejected", slo_class="batch"))
    records.append(record("abt", status="aborted", slo_class="batch"))
    return records


def test_summarize_counts_attainment_and_goodput() -> None:
    summary = summarize(sample_records(), duration_s=4.0, instance_seconds=8.0)
    assert set(summary) == SUMMARY_KEYS
    assert summary["num_requests"] == 12
    assert summary["num_completed"] == 10
    assert summary["num_rejected"] == 1
    assert summary["num_attained"] == 5  # ttft 0.1 .. 0.5
    assert summary["attainment"] == pytest.approx(5 / 12)
    assert summary["goodput_rps"] == pytest.approx(5 / 4.0)
    assert summary["instance_seconds"] == 8.0
    # interactive: ttft 0.1, 0.3, 0.5, 0.7, 0.9 -> 3 of 5; standard: 0.2, 0.4, ... -> 2 of 5.
    assert summary["attainment_by_class"] == {"batch": 0.0, "interactive": 0.6, "standard": 0.4}
    assert list(summary["attainment_by_class"]) == ["batch", "interactive", "standard"]
    assert summary["counts_by_class"]["batch"] == {
        "num_requests": 2,
        "num_attained": 0,
        "num_completed": 0,
        "num_rejected": 1,
        "num_missed_ttft": 0,
        "num_missed_tpot": 0,
        "num_attained_per_token": 0,
    }
    # interactive misses 0.7 and 0.9 on TTFT; none is slow per token.
    assert summary["counts_by_class"]["interactive"]["num_missed_ttft"] == 2
    assert summary["counts_by_class"]["interactive"]["num_missed_tpot"] == 0


def test_summarize_counts_which_target_a_request_missed() -> None:
    records = [
        record("ok"),
        record("slow-first", ttft_s=0.9),
        record("slow-rest", tpot_s=0.08),
        record("slow-both", ttft_s=0.9, tpot_s=0.08),
        record("one-token", ttft_s=0.1, num_output_tokens=1),
    ]
    counts = summarize(records, duration_s=1.0)["counts_by_class"]["standard"]
    assert counts["num_attained"] == 2
    assert (counts["num_missed_ttft"], counts["num_missed_tpot"]) == (2, 2)


def test_summarize_percentiles_over_completed_requests() -> None:
    summary = summarize(sample_records(), duration_s=1.0)
    ttft = summary["ttft_s"]
    # Linear interpolation over 0.1 .. 1.0; the aborted request's 0.1 s is not counted.
    assert ttft["p50"] == pytest.approx(0.55)
    assert ttft["p90"] == pytest.approx(0.91)
    assert ttft["p99"] == pytest.approx(0.991)
    assert ttft["mean"] == pytest.approx(0.55)
    assert summary["tpot_s"] == pytest.approx({"p50": 0.01, "p90": 0.01, "p99": 0.01, "mean": 0.01})
    assert summary["e2e_s"]["mean"] == pytest.approx(0.55 + 0.1)


def test_summarize_without_data() -> None:
    summary = summarize([record("rej", ttft_s=None, status="rejected")], duration_s=1.0)
    assert summary["ttft_s"] == {"p50": None, "p90": None, "p99": None, "mean": None}
    assert summary["attainment"] == 0.0
    empty = summarize([], duration_s=1.0)
    assert empty["num_requests"] == 0 and empty["attainment"] == 0.0
    assert empty["attainment_by_class"] == {}


def test_summarize_json_independent_of_record_order() -> None:
    records = sample_records()
    expected = json.dumps(summarize(records, 3.0))
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(records)
        assert json.dumps(summarize(records, 3.0)) == expected


def test_summarize_validation() -> None:
    with pytest.raises(ValueError, match="'duration_s'"):
        summarize([], duration_s=0.0)
    with pytest.raises(ValueError, match="'instance_seconds'"):
        summarize([], duration_s=1.0, instance_seconds=-1.0)
    with pytest.raises(ValueError, match="'a' appears twice"):
        summarize([record("a"), record("a")], duration_s=1.0)


def test_conservation() -> None:
    check_conservation(["a", "b"], [record("b"), record("a")])
    with pytest.raises(ValueError, match=r"1 request\(s\) have no record: 'b'"):
        check_conservation(["a", "b"], [record("a")])
    with pytest.raises(ValueError, match="'a' is recorded twice"):
        check_conservation(["a", "b"], [record("a"), record("a"), record("b")])
    with pytest.raises(ValueError, match="'z' was never offered"):
        check_conservation(["a"], [record("a"), record("z")])
    with pytest.raises(ValueError, match="'a' was offered twice"):
        check_conservation(["a", "a"], [record("a")])


SWEEP = [(1.0, 1.0), (2.0, 0.95), (3.0, 0.85), (4.0, 0.5), (5.0, 0.2)]


def test_goodput_at_interpolates_first_crossing() -> None:
    # Passing at 2 (0.95), failing at 3 (0.85): 0.9 is halfway.
    assert goodput_at(SWEEP, target=0.9) == pytest.approx(2.5)
    assert goodput_at(list(reversed(SWEEP)), target=0.9) == pytest.approx(2.5)
    assert goodput_at(SWEEP, target=0.95) == pytest.approx(2.0)  # equal to target passes
    assert goodput_at(SWEEP, target=0.1) == 5.0  # all pass: the highest rate
    assert goodput_at([(1.0, 0.5), (2.0, 0.95)], target=0.9) == 0.0  # none before a failure
    # A later rate passing again is noise: the first crossing counts.
    assert goodput_at([(1.0, 1.0), (2.0, 0.8), (3.0, 0.95)]) == pytest.approx(1.5)


def test_rate_where_falls_to() -> None:
    # From 0.85 at 3 to 0.5 at 4: reaches 0.5 exactly at 4; to 0.6 at 3 + 0.25/0.35.
    assert rate_where_falls_to(SWEEP, level=0.5) == pytest.approx(4.0)
    assert rate_where_falls_to(SWEEP, level=0.6) == pytest.approx(3 + 0.25 / 0.35)
    assert rate_where_falls_to(SWEEP, level=0.1) is None
    assert rate_where_falls_to([(2.0, 0.3), (3.0, 0.1)]) == 2.0


def test_attainment_at() -> None:
    assert attainment_at(SWEEP, 3.5) == pytest.approx(0.675)
    assert attainment_at(SWEEP, 6.0) is None


@pytest.mark.parametrize(
    "points",
    [[], [(1.0, 1.2)], [(1.0, 0.5), (1.0, 0.6)], [(-1.0, 0.5)], [(float("nan"), 0.5)]],
)
def test_sweep_validation(points: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError, match="'attainments_by_rate'"):
        goodput_at(points)
    with pytest.raises(ValueError, match="'target'"):
        goodput_at(SWEEP, target=1.5)


def make_request(arrival_s: float = 1.0) -> Request:
    slo = SLO(ttft_s=0.5, tpot_s=0.05, priority=0, class_name="interactive")
    return Request("q", [1, 2, 3], SamplingParams(max_tokens=3), slo=slo, arrival_s=arrival_s)


def test_record_from_request_agrees_with_request() -> None:
    request = make_request()
    for i, now in enumerate((1.3, 1.35, 1.46)):
        request.append_token(10 + i, now)
    request.finish(FinishReason.LENGTH, 1.46)
    r = record_from_request(request)
    assert (r.status, r.slo_class, r.priority, r.num_output_tokens) == (
        "completed",
        "interactive",
        0,
        3,
    )
    assert r.ttft_s == pytest.approx(request.ttft_s)
    assert r.tpot_s == pytest.approx(request.tpot_s)
    assert r.attained is request.attained is False  # mean TPOT 0.08 > 0.05

    rejected = make_request()
    rejected.finish(FinishReason.REJECTED, 1.0)
    assert record_from_request(rejected).status == "rejected"


def test_record_from_request_needs_a_final_end() -> None:
    with pytest.raises(ValueError, match="not finished"):
        record_from_request(make_request())
    prefilled = make_request()
    prefilled.finish(FinishReason.PREFILLED, 1.2)
    with pytest.raises(ValueError, match="not final"):
        record_from_request(prefilled)


def test_request_its_metrics_and_its_record_agree_on_mean_tpot_to_the_finish() -> None:
    """One definition, one end stamp: a request that ends after its last token (a stop string
    found once the step's output is processed) counts the time up to its end."""
    request = Request("r", [1, 2], SamplingParams(max_tokens=8), SLO(1.0, 0.1), arrival_s=0.0)
    request.append_token(5, 0.5)
    request.append_tokens(6, 4, 0.9)
    request.finish(FinishReason.STOP, 1.3)
    expected = (1.3 - 0.5) / 4
    metrics = RequestMetrics(
        arrival_s=0.0,
        first_token_s=request.first_token_s,
        finish_s=request.finish_s,
        num_output_tokens=5,
    )
    assert request.tpot_s == pytest.approx(expected)
    assert metrics.tpot_s == pytest.approx(expected)
    assert record_from_request(request).tpot_s == pytest.approx(expected)
    assert not request.attained and not record_from_request(request).attained  # 0.2 > 0.1


def test_a_stall_that_catches_up_meets_mean_tpot_but_not_per_token_deadlines() -> None:
    # TTFT 0.5 s, TPOT 50 ms: token 1 is due at 0.55 s and comes at 0.58 s, the other nine a
    # millisecond apart, so the mean TPOT (48.9 ms) is within target and one token is late.
    request = Request("s", [1, 2], SamplingParams(max_tokens=11), SLO(0.5, 0.05))
    for t in (0.1, 0.58, *(0.58 + 0.001 * k for k in range(1, 10))):
        request.append_token(7, t)
    request.finish(FinishReason.LENGTH, 0.589)
    record = record_from_request(request)
    assert record.attained and not record.attained_per_token
    assert record.max_token_lateness_s == pytest.approx(0.03)
    assert record.max_itl_s == pytest.approx(0.48)
    assert record.finish_reason == "length"
    summary = summarize([record], duration_s=1.0)
    assert (summary["attainment"], summary["attainment_per_token"]) == (1.0, 0.0)
    assert (summary["goodput_rps"], summary["goodput_per_token_rps"]) == (1.0, 0.0)


def test_a_record_delivered_later_moves_every_output_and_keeps_the_tpot() -> None:
    from hyperflexis.bench.metrics import delivered_after

    record = RequestRecord(
        request_id="r",
        slo_class="standard",
        priority=1,
        ttft_slo_s=0.5,
        tpot_slo_s=0.1,
        arrival_s=1.0,
        first_token_s=1.45,
        finish_s=2.4,
        num_prompt_tokens=8,
        num_output_tokens=11,
        status="completed",
        max_token_lateness_s=-0.04,
    )
    later = delivered_after(record, 0.1)
    assert later.ttft_s == pytest.approx(0.55) and later.tpot_s == pytest.approx(record.tpot_s)
    assert later.e2e_s == pytest.approx(1.5) and later.max_token_lateness_s == pytest.approx(0.06)
    assert record.attained and not later.attained and not later.attained_per_token
    assert delivered_after(record, 0.0) is record
    with pytest.raises(ValueError, match="response latency"):
        delivered_after(record, -1e-3)
