"""`plan_window`: a decode-only window stops exactly where the policy would do something else."""

from __future__ import annotations

import itertools

from hyperflexis.core import SLO, Request, SamplingParams
from hyperflexis.core.slo import token_lateness_s
from hyperflexis.perf import StepCostModel, make_cost_model
from hyperflexis.scheduler import KVBlockManager, Scheduler, SchedulerConfig, make_scheduler
from hyperflexis.sim.fast_forward import plan_window
from hyperflexis.sim.instance import SimInstance

MODEL = make_cost_model("fixed", coefficients=(0.01, 0.0, 0.0, 0.0, 0.0))  # 10 ms a step


def _decoding(
    policy: str,
    num_blocks: int,
    max_tokens: int,
    tpot_s: float = 0.1,
    num_requests: int = 2,
    model: StepCostModel = MODEL,
) -> Scheduler:
    """A scheduler whose requests (4-token prompts, blocks of 4) have just emitted their first
    token."""
    scheduler = make_scheduler(policy, SchedulerConfig(), KVBlockManager(num_blocks, 4), model)
    for i in range(num_requests):
        scheduler.add_request(
            Request(
                f"r{i}",
                [1, 2, 3, 4],
                SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                SLO(ttft_s=10.0, tpot_s=tpot_s),
            )
        )
    instance = SimInstance("i", scheduler, model, fast_forward=False)
    end_s, _ = instance.start(0.0)
    assert end_s is not None
    instance.finish_step(end_s)
    assert all(r.num_output_tokens == 1 for r in scheduler.running)
    return scheduler


def test_window_stops_before_the_step_that_finishes_a_request() -> None:
    scheduler = _decoding("fcfs", num_blocks=64, max_tokens=10)
    window = plan_window(scheduler, MODEL, 1.0)
    assert window is not None
    assert window.num_steps == 8  # tokens 2..9; token 10 finishes them and runs for real
    assert window.ends_s[0] == 1.01 and abs(window.end_s - 1.08) < 1e-12


def test_window_stops_before_kv_runs_short() -> None:
    # Each request holds 1 block (4 tokens) of 6; steps 1 and 5 open one more each, step 9
    # would need two more than there are.
    scheduler = _decoding("fcfs", num_blocks=6, max_tokens=20)
    window = plan_window(scheduler, MODEL, 0.0)
    assert window is not None and window.num_steps == 8
    window.apply(scheduler, window.end_s)
    assert scheduler.kv.num_free_blocks == 0
    assert [r.num_computed_tokens for r in scheduler.running] == [12, 12]


def test_no_window_while_anything_waits() -> None:
    scheduler = _decoding("fcfs", num_blocks=64, max_tokens=10)
    scheduler.add_request(Request("late", [1, 2], SamplingParams(max_tokens=2)))
    assert plan_window(scheduler, MODEL, 0.0) is None


def test_hyperflexis_window_respects_the_tpot_gap_bound() -> None:
    # 2 ms a step plus 4 ms a decode: two decodes take 10 ms, within 1.5 x 10 ms but not within
    # 1.5 x 5 ms, where hyperflexis would preempt one.
    model = make_cost_model("fixed", coefficients=(0.002, 0.0, 0.0, 0.004, 0.0))
    loose = _decoding("hyperflexis", 64, 10, tpot_s=0.010, model=model)
    assert plan_window(loose, model, 0.0) is not None
    tight = _decoding("hyperflexis", 64, 10, tpot_s=0.005, model=model)
    assert plan_window(tight, model, 0.0) is None
    # One decode alone is never preempted for time.
    alone = _decoding("hyperflexis", 64, 10, tpot_s=0.005, num_requests=1, model=model)
    assert plan_window(alone, model, 0.0) is not None


def test_apply_mid_window_holds_the_step_in_flight() -> None:
    scheduler = _decoding("fcfs", num_blocks=64, max_tokens=20)
    window = plan_window(scheduler, MODEL, 0.0)
    assert window is not None
    window.apply(scheduler, 0.035)  # three steps done, the fourth in flight
    assert [r.num_computed_tokens for r in scheduler.running] == [7, 7]
    assert [r.num_output_tokens for r in scheduler.running] == [4, 4]
    assert all(r.last_token_s == window.ends_s[2] for r in scheduler.running)
    # The step in flight writes position 7, in the second block.
    assert [len(scheduler.kv.block_table(r.request_id)) for r in scheduler.running] == [2, 2]
    assert window.cut_after_step_in_flight(0.035)
    assert window.num_steps == 4


def test_apply_keeps_the_largest_gap_and_per_token_lateness_of_each_step() -> None:
    # Steps grow with the context (1 ms a step + 1 ms per 100 context tokens), applied in two
    # pieces: the worst gap and lateness are those of the single steps, not of the pieces.
    model = make_cost_model("fixed", coefficients=(0.001, 0.0, 0.0, 0.0, 1e-5))
    scheduler = _decoding("fcfs", num_blocks=64, max_tokens=30, tpot_s=0.0011, model=model)
    before = {r.request_id: (r.last_token_s, r.num_output_tokens) for r in scheduler.running}
    window = plan_window(scheduler, model, 0.5)
    assert window is not None
    window.apply(scheduler, window.ends_s[4])
    window.apply(scheduler, window.end_s)
    for request in scheduler.running:
        last_s, first_index = before[request.request_id]
        assert last_s is not None
        times = [last_s, *window.ends_s]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        lateness = [
            token_lateness_s(t, first_index + j, 0.0, 10.0, 0.0011)
            for j, t in enumerate(window.ends_s)
        ]
        assert request.max_itl_s == max(gaps)
        assert request.max_token_lateness_s == max(lateness)
