from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.feasibility import PrefillJob, budgeted_prefill_rate, split_feasible
from tests.scheduler.helpers import LinearCost


def edf_meets_all(jobs: list[PrefillJob], now: float, rate: float) -> bool:
    elapsed = 0.0
    for job in sorted(jobs, key=lambda j: (j[0], j[1])):
        elapsed += job[2] / rate
        if now + elapsed > job[0] + 1e-9:
            return False
    return True


def test_least_important_goes_late() -> None:
    jobs = [
        (1.0, 0, 600, "vip"),
        (1.0, 2, 600, "bulk"),
        (1.0, 1, 300, "std"),
    ]
    feasible, late = split_feasible(jobs, now=0.0, tokens_per_s=1000)
    assert late == ["bulk"] and set(feasible) == {"vip", "std"}


def test_hopeless_job_does_not_displace_others() -> None:
    jobs = [(0.1, 0, 5000, "hopeless"), (2.0, 2, 500, "ok")]
    feasible, late = split_feasible(jobs, now=0.0, tokens_per_s=1000)
    assert feasible == ["ok"] and late == ["hopeless"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 3.0), st.integers(0, 2), st.integers(1, 2000)),
        min_size=0,
        max_size=8,
    )
)
def test_feasible_set_meets_every_deadline_in_edf_order(
    specs: list[tuple[float, int, int]],
) -> None:
    jobs = [(d, p, w, i) for i, (d, p, w) in enumerate(specs)]
    feasible, late = split_feasible(jobs, now=0.0, tokens_per_s=1000)
    assert sorted(feasible + late) == list(range(len(jobs)))
    kept = [jobs[i] for i in feasible]
    assert edf_meets_all(kept, 0.0, 1000)
    assert [j[3] for j in sorted(kept, key=lambda j: (j[0], j[1]))] == feasible
    # Whenever everything fits, nothing is late.
    if edf_meets_all(jobs, 0.0, 1000):
        assert not late
    # A job goes late only for work at least as important as itself (or when hopeless alone).
    for index in late:
        job = jobs[index]
        hopeless = job[2] / 1000 > job[0]
        assert hopeless or any(j[1] <= job[1] for j in jobs if j is not job)


def test_the_prefill_rate_is_the_capped_chunk_over_its_step_time() -> None:
    # A prefill instance plans 200-ms steps but its 2,048-token budget fills in 46 ms: steps run
    # back to back, so it sustains 2,048 tokens per 46 ms, not per 200 ms; planned 20% below.
    model = LinearCost()  # 5 ms a step, 0.02 ms a prefill token, 0.1 ms a decode
    capped_s = 5e-3 + 2e-5 * 2048
    for config in (
        SchedulerConfig(role="prefill", max_num_batched_tokens=2048, target_step_s=0.2),
        SchedulerConfig(role="mixed", max_num_batched_tokens=2048, max_step_s=0.5),
    ):
        for margin in (0.0, 0.2):
            planned = replace(config, prefill_rate_margin=margin)
            rate = budgeted_prefill_rate(model, StepFeatures(), math.inf, planned)
            assert rate == pytest.approx((1 - margin) * 2048 / capped_s)
    # Where the time budget binds first (a tight TPOT beside 100 decodes), the chunk fills it.
    decodes = StepFeatures(num_decodes=100, decode_ctx_tokens=1000)
    mixed = SchedulerConfig(max_num_batched_tokens=2048, tpot_margin=0.0, prefill_rate_margin=0)
    rate = budgeted_prefill_rate(model, decodes, 0.03, mixed)
    assert rate == pytest.approx(750 / 0.03, rel=1e-3)  # 15 ms of decodes, 750 tokens in 15
