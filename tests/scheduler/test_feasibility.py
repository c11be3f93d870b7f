from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hyperflexis.scheduler.feasibility import PrefillJob, split_feasible


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
