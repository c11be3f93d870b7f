"""Scenario tests of the hyperflexis policy on a manual clock with a linear fake latency model."""

from __future__ import annotations

import pytest

from hyperflexis.core import FinishReason, Request
from hyperflexis.scheduler import ScheduledChunk, Scheduler
from tests.scheduler.helpers import make, request, run_until_done, step


def start_decoding(scheduler: Scheduler, req: Request, now: float = 0.0) -> float:
    """Run `req` alone until it has its first token; returns the clock after."""
    scheduler.add_request(req)
    while req.first_token_s is None:
        now, _ = step(scheduler, now)
    return now


def bank_slack(dec: Request, now: float) -> None:
    """Pretend its first token came 0.1 s ago and it is 9 tokens ahead of its TPOT."""
    dec.first_token_s = now - 0.1
    dec.append_tokens(5, 9, now)
    dec.num_computed_tokens += 9
    assert dec.next_token_deadline_s - now > 0.8


def chunk_of(chunks: list[ScheduledChunk], request_id: str) -> int:
    return sum(c.num_tokens for c in chunks if c.request_id == request_id)


@pytest.mark.parametrize(("tpot_s", "tight"), [(0.02, True), (0.5, False)])
def test_decode_tpot_sets_the_prefill_chunk(tpot_s: float, tight: bool) -> None:
    scheduler = make(max_num_batched_tokens=4096)
    now = start_decoding(scheduler, request("dec", 16, output_len=100, tpot_s=tpot_s))
    scheduler.add_request(request("long", 6000, ttft_s=60.0, arrival_s=now))
    output = scheduler.schedule(now)
    chunk = chunk_of(output.chunks, "long")
    assert chunk_of(output.chunks, "dec") == 1
    decode = scheduler.requests["dec"]
    assert output.predicted_step_s is not None
    if tight:
        # The step must end before the decode's next token is due and within 1.5 TPOT.
        assert 0 < chunk < 4095
        assert now + output.predicted_step_s <= decode.next_token_deadline_s + 1e-9
        assert output.predicted_step_s <= 1.5 * tpot_s + 1e-9
    else:
        assert chunk == 4095  # only the token budget limits it


def test_tpot_margin_plans_the_decode_deadline_early() -> None:
    chunks = {}
    for margin in (0.0, 0.2):
        scheduler = make(max_num_batched_tokens=4096, tpot_margin=margin)
        now = start_decoding(scheduler, request("dec", 16, output_len=100, tpot_s=0.02))
        scheduler.add_request(request("long", 6000, ttft_s=60.0, arrival_s=now))
        output = scheduler.schedule(now)
        decode = scheduler.requests["dec"]
        assert decode.first_token_s is not None and output.predicted_step_s is not None
        planned_s = decode.first_token_s + (1 - margin) * (
            decode.next_token_deadline_s - decode.first_token_s
        )
        assert now + output.predicted_step_s <= planned_s + 1e-9
        chunks[margin] = chunk_of(output.chunks, "long")
    assert 0 < chunks[0.2] < chunks[0.0]


@pytest.mark.parametrize("margin", [-0.1, 1.0])
@pytest.mark.parametrize("name", ["tpot_margin", "prefill_rate_margin"])
def test_margins_out_of_range_are_rejected(name: str, margin: float) -> None:
    with pytest.raises(ValueError, match=name):
        make(**{name: margin})  # type: ignore[arg-type]


def test_urgent_high_priority_request_runs_ahead_of_low_priority_backlog() -> None:
    scheduler = make(max_num_batched_tokens=1024)
    for i in range(6):
        scheduler.add_request(request(f"bulk{i}", 2000, ttft_s=30.0, priority=2))
    now, _ = step(scheduler, 0.0)
    scheduler.add_request(request("vip", 300, ttft_s=0.1, priority=0, arrival_s=now))
    output = scheduler.schedule(now)
    assert output.chunks[0].request_id == "vip"
    assert output.chunks[0].num_tokens == 300


def test_infeasible_backlog_sheds_least_important_and_the_rest_attain() -> None:
    # The priority order (the default sheds the most work: tests/scheduler/test_shed_order.py).
    scheduler = make(max_num_batched_tokens=2048, admission_control=True, shed_order="priority")
    # Ten 2000-token prompts due in 0.25 s: at ~50k tokens/s only about six can make it.
    reqs = [
        request(f"r{i}", 2000, output_len=4, ttft_s=0.25, tpot_s=0.1, priority=i % 3, late="reject")
        for i in range(10)
    ]
    finished = run_until_done(scheduler, reqs)
    rejected = [r for r in finished if r.finish_reason is FinishReason.REJECTED]
    served = [r for r in finished if r.finish_reason is not FinishReason.REJECTED]
    assert rejected, "the backlog is infeasible, something must go late"
    assert served
    assert all(r.attained for r in served)
    # Shedding goes least important first: everything served is at least as important as
    # everything rejected.
    assert max(r.slo.priority for r in served) <= min(r.slo.priority for r in rejected)


def test_ahead_decode_sits_out_for_an_urgent_prefill() -> None:
    # No planning margins: the timings below are exact, and a 5% margin on the decode's TPOT
    # (or any on the prefill rate) would already rate the urgent prefill late.
    scheduler = make(max_num_batched_tokens=16384, tpot_margin=0.0, prefill_rate_margin=0.0)
    now = start_decoding(scheduler, request("dec", 16, output_len=100, tpot_s=0.1))
    dec = scheduler.requests["dec"]
    bank_slack(dec, now)
    # 8000 tokens take 0.165 s alone: over the decode's 0.15 s gap bound, inside its own TTFT,
    # which two steps (0.15 s, then 0.02 s for the rest) would miss.
    scheduler.add_request(request("urgent", 8000, ttft_s=0.169, priority=0, arrival_s=now))
    output = scheduler.schedule(now)
    assert chunk_of(output.chunks, "urgent") == 8000
    assert chunk_of(output.chunks, "dec") == 0
    assert dec.next_token_deadline_s > now + 2 * (output.predicted_step_s or 0)


@pytest.mark.parametrize(("banked", "ttft_s"), [(False, 0.169), (True, 0.2)])
def test_decode_stays_unless_sitting_out_is_needed(banked: bool, ttft_s: float) -> None:
    """Without slack it cannot sit out; with slack it need not when two steps still make it."""
    scheduler = make(max_num_batched_tokens=16384)
    now = start_decoding(scheduler, request("dec", 16, output_len=100, tpot_s=0.1))
    if banked:
        bank_slack(scheduler.requests["dec"], now)
    scheduler.add_request(request("urgent", 8000, ttft_s=ttft_s, priority=0, arrival_s=now))
    output = scheduler.schedule(now)
    assert chunk_of(output.chunks, "dec") == 1
    assert 0 < chunk_of(output.chunks, "urgent") < 8000


def test_kv_shortage_preempts_least_important_and_it_completes_with_same_tokens() -> None:
    def run(num_blocks: int) -> tuple[dict[str, list[int]], Scheduler]:
        scheduler = make(num_blocks=num_blocks, block_size=4, max_num_batched_tokens=256)
        reqs = [
            request("vip", 20, output_len=30, priority=0, tpot_s=1.0, ttft_s=5.0),
            request("low", 20, output_len=30, priority=2, tpot_s=1.0, ttft_s=5.0),
        ]
        finished = run_until_done(scheduler, reqs)
        return {r.request_id: r.output_token_ids for r in finished}, scheduler

    ample, _ = run(1000)
    short, scheduler = run(20)  # 80 token slots: both need 50 at the end
    assert scheduler.num_preemptions > 0
    assert short == ample
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks


def test_kv_victim_is_the_least_important() -> None:
    scheduler = make(num_blocks=12, block_size=4, max_num_batched_tokens=256)
    for rid, prio in (("a", 0), ("b", 2), ("c", 1)):
        scheduler.add_request(request(rid, 15, output_len=20, priority=prio, ttft_s=5, tpot_s=1))
    now = 0.0
    while not scheduler.num_preemptions:
        now, _ = step(scheduler, now)
    assert scheduler.requests["b"].num_preemptions == 1
    assert scheduler.requests["a"].num_preemptions == 0


def test_prefill_role_finishes_after_first_token() -> None:
    scheduler = make(role="prefill")
    finished = run_until_done(scheduler, [request("p", 100, output_len=10)])
    assert [r.finish_reason for r in finished] == [FinishReason.PREFILLED]
    assert finished[0].num_output_tokens == 1
    # Its prompt's KV stays pinned for the decode peer until released (tests/scheduler/
    # test_handoff.py has the lease's other paths).
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks - 7
    assert scheduler.release_lease("p")
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks


def test_prefill_role_serves_a_long_urgent_prompt_its_steps_can_make_in_time() -> None:
    # 6,000 tokens in 2,048-token steps of 46 ms take 0.14 s: within a 0.5-s TTFT. Planned at
    # 2,048 tokens per 200-ms target step instead, it looked late and was rejected.
    scheduler = make(role="prefill", admission_control=True, max_num_batched_tokens=2048)
    urgent = request("u", 6000, ttft_s=0.5, priority=0, late="reject")
    finished = run_until_done(scheduler, [urgent])
    assert [r.finish_reason for r in finished] == [FinishReason.PREFILLED]
    assert urgent.first_token_s is not None and urgent.first_token_s <= 0.5


def test_decode_role_admits_transferred_requests_and_decodes_only() -> None:
    scheduler = make(role="decode")
    req = request("d", 100, output_len=5)
    req.num_computed_tokens = 100  # KV arrived from a prefill instance
    req.append_token(3, 0.0)
    scheduler.add_request(req)
    output = scheduler.schedule(0.0)
    assert [(c.request_id, c.start_pos, c.num_tokens) for c in output.chunks] == [("d", 100, 1)]
    finished = run_until_done(scheduler, [])
    assert finished[0].num_output_tokens == 5


def test_needs_a_cost_model() -> None:
    from hyperflexis.scheduler import KVBlockManager, SchedulerConfig, make_scheduler

    with pytest.raises(ValueError, match="latency model"):
        make_scheduler("hyperflexis", SchedulerConfig(), KVBlockManager(8, 4), None)


def test_late_work_does_not_stretch_the_step_past_the_tightest_waiting_tpot() -> None:
    scheduler = make(max_num_batched_tokens=16384)
    scheduler.add_request(request("vip", 100, ttft_s=1.0, tpot_s=0.04, priority=0))
    scheduler.add_request(request("hopeless", 20000, output_len=2, ttft_s=0.001, tpot_s=0.3))
    output = scheduler.schedule(0.0)
    assert chunk_of(output.chunks, "vip") == 100
    assert 0 < chunk_of(output.chunks, "hopeless") < 16384 - 100
    assert output.predicted_step_s is not None
    assert output.predicted_step_s <= 1.5 * 0.04 + 1e-9
