"""Steady-state workloads: every rate offers the same span of arrivals, from a trace that is
extended and, where too short, looped."""

from __future__ import annotations

import numpy as np
import pytest

from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads import (
    Trace,
    loop_trace,
    mean_rate_rps,
    parse_slo_mix,
    poisson,
    steady_num_requests,
    steady_workload,
)
from hyperflexis.workloads.lengths import FixedLengths

MIX = parse_slo_mix("interactive:3,standard:5,batch:2", SLOClasses())
TRACE = Trace(
    source="t",
    arrivals_s=np.array([0.0, 1.0, 3.0, 4.0]),  # mean gap 4/3 s
    prompt_lens=np.array([10, 20, 30, 40]),
    output_lens=np.array([1, 2, 3, 4]),
)


def test_the_count_covers_the_duration_at_the_rate() -> None:
    assert steady_num_requests(10.0, 120.0) == 1201
    assert steady_num_requests(0.5, 3.0) == 3
    with pytest.raises(ValueError, match="duration_s"):
        steady_num_requests(1.0, 0.0)


def test_a_short_trace_is_looped_one_mean_gap_after_its_end() -> None:
    looped = loop_trace(TRACE, 10)
    period = 4.0 + 4.0 / 3  # span + one mean gap
    expected = [0.0, 1.0, 3.0, 4.0] + [t + period for t in (0.0, 1.0, 3.0, 4.0)]
    expected += [2 * period, 2 * period + 1.0]
    assert looped.arrivals_s.tolist() == pytest.approx(expected)
    assert looped.prompt_lens.tolist() == [10, 20, 30, 40, 10, 20, 30, 40, 10, 20]
    assert looped.output_lens.tolist()[-2:] == [1, 2]
    assert loop_trace(TRACE, 2).arrivals_s.tolist() == [0.0, 1.0]  # long enough: its head


@pytest.mark.parametrize("rate", [2.0, 5.0])
def test_every_rate_replays_the_same_duration(rate: float) -> None:
    workload = steady_workload(seed=1, slo_mix=MIX, rate_rps=rate, duration_s=30.0, trace=TRACE)
    arrivals = [s.arrival_s for s in workload]
    assert len(workload) == steady_num_requests(rate, 30.0)
    assert arrivals[-1] == pytest.approx(30.0)  # the same span at every rate
    assert mean_rate_rps(arrivals) == pytest.approx(rate)
    assert len({s.request_id for s in workload}) == len(workload)
    # The trace's lengths, in its order, repeated.
    assert [s.prompt_len for s in workload[:6]] == [10, 20, 30, 40, 10, 20]


def test_synthetic_arrivals_draw_the_count() -> None:
    workload = steady_workload(
        seed=3,
        slo_mix=MIX,
        rate_rps=20.0,
        duration_s=60.0,
        arrival=poisson(1.0),
        prompt_lens=FixedLengths(100),
        output_lens=FixedLengths(10),
    )
    assert len(workload) == 1201
    assert workload[-1].arrival_s == pytest.approx(60.0, rel=0.1)
    with pytest.raises(ValueError, match="num_requests"):
        steady_workload(seed=3, slo_mix=MIX, rate_rps=1.0, duration_s=5.0, num_requests=4)
