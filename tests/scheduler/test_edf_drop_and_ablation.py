"""`edf-drop` drops exactly the waiting requests that can no longer meet their first-token
deadline; each `hyperflexis` ablation differs from the full policy in the part it turns off."""

from __future__ import annotations

import pytest

from hyperflexis.core import FinishReason
from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler import policy_class
from tests.scheduler.helpers import LinearCost, make, request, run_until_done, step
from tests.scheduler.test_hyperflexis import chunk_of, start_decoding

COST = LinearCost()


def _prefill_s(prompt_len: int) -> float:
    return COST.predict(StepFeatures().with_prefill(prompt_len, 0))


def test_edf_drop_drops_exactly_the_requests_past_hope() -> None:
    scheduler = make("edf-drop", max_num_batched_tokens=8192)
    running = request("running", 100, output_len=50, ttft_s=0.2)
    now = start_decoding(scheduler, running)  # has its first token: never dropped
    # (prompt tokens, TTFT): arrival 0, checked at `at`; prefill alone is 5 ms + 20 us/token.
    specs = {"a": (1000, 1.0), "b": (500, 1.0), "c": (2000, 2.0), "d": (4000, 1.06), "e": (1, 0.9)}
    for name, (prompt_len, ttft_s) in specs.items():
        scheduler.add_request(request(name, prompt_len, ttft_s=ttft_s))
    at = 0.98
    assert now < at
    expected = {n for n, (p, t) in specs.items() if at + _prefill_s(p) > t}
    assert expected == {"a", "d", "e"}
    output = scheduler.schedule(at)
    assert set(output.rejected_ids) == expected
    assert [c.request_id for c in output.chunks] == ["running", "b", "c"]  # the rest, by EDF
    finished = scheduler.update(output, {c.request_id: 1 for c in output.chunks if c.sample}, at)
    assert {r.request_id for r in finished} == expected
    assert all(r.finish_reason is FinishReason.REJECTED for r in finished)
    run_until_done(scheduler, [], at + 0.1)
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks


def test_edf_drop_drops_nothing_that_can_still_make_it() -> None:
    scheduler = make("edf-drop", max_num_batched_tokens=2048)
    reqs = [request(f"r{i}", 300, output_len=4, ttft_s=5.0) for i in range(5)]
    finished = run_until_done(scheduler, reqs)
    assert all(r.finish_reason is FinishReason.LENGTH and r.attained for r in finished)
    assert policy_class("edf-drop").needs_cost_model


def test_no_budget_fills_the_token_budget_whatever_the_decodes_deadlines() -> None:
    chunks = {}
    for policy in ("hyperflexis", "hyperflexis-no-budget"):
        scheduler = make(policy, max_num_batched_tokens=4096)
        now = start_decoding(scheduler, request("dec", 16, output_len=100, tpot_s=0.02))
        scheduler.add_request(request("long", 6000, ttft_s=60.0, arrival_s=now))
        chunks[policy] = chunk_of(scheduler.schedule(now).chunks, "long")
    assert 0 < chunks["hyperflexis"] < 4095
    assert chunks["hyperflexis-no-budget"] == 4095  # only the token budget limits it


def _two_that_cannot_both_make_it(policy: str) -> list[str]:
    """A big important prompt and a small unimportant one due together; ~50k tokens/s serves
    one of them in time. Returns who is served first."""
    scheduler = make(
        policy, max_num_batched_tokens=8192, prefill_rate_margin=0.0, shed_order="priority"
    )
    scheduler.add_request(request("vip", 8000, ttft_s=0.2, priority=0))
    scheduler.add_request(request("small", 4000, ttft_s=0.2, priority=2))
    return [c.request_id for c in scheduler.schedule(0.0).chunks]


@pytest.mark.parametrize(
    ("policy", "first"),
    [
        ("hyperflexis", "vip"),  # the least important goes late (shed_order "priority")
        ("hyperflexis-no-prioritise", "small"),  # the most work goes late, priority unseen
    ],
)
def test_no_prioritise_sets_aside_the_most_work_not_the_least_important(
    policy: str, first: str
) -> None:
    assert _two_that_cannot_both_make_it(policy)[0] == first


def test_no_shed_serves_hopeless_work_in_edf_order() -> None:
    served_first = {}
    for policy in ("hyperflexis", "hyperflexis-no-shed"):
        scheduler = make(policy, max_num_batched_tokens=2000)  # one prompt per step
        scheduler.add_request(request("hopeless", 2000, ttft_s=0.01))  # 45 ms alone
        scheduler.add_request(request("fine", 2000, ttft_s=5.0))
        now, _ = step(scheduler, 0.0)
        served_first[policy] = scheduler.requests["fine"].num_computed_tokens > 0
        run_until_done(scheduler, [], now)
        assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
    assert served_first == {"hyperflexis": True, "hyperflexis-no-shed": False}
