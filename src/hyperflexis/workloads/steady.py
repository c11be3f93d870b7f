"""Steady-state workloads: every rate offers the same length of arrivals, so that overload is
sustained instead of absorbed by the slack of the last requests.

A replay of the first N requests of a trace time-scaled to rate R lasts N / R seconds: at twice
the rate it is half as long, and past capacity the backlog is mostly served after the last
arrival (the batch class's 10 s of TTFT slack hides it). Here the rate sets the count instead:
at rate R a run offers `steady_num_requests(R, D)` = ceil(R x D) + 1 requests, whose arrivals
span D seconds at mean rate R. From a trace they are its first requests in order, time-scaled
to R (`trace.scale_to_rate`), extended by the trace's later rows; a trace with fewer rows than
that is looped (`loop_trace`: it restarts after its last arrival, one mean gap later, with the
same lengths). Synthetic arrivals just draw that many.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hyperflexis.workloads._checks import check_int, check_positive
from hyperflexis.workloads.build import build_workload
from hyperflexis.workloads.slo_mix import SLOMix
from hyperflexis.workloads.spec import Workload
from hyperflexis.workloads.trace import Trace

MIN_STEADY_DURATION_S = 120.0  # issue 18: at least two simulated minutes at every rate


def steady_num_requests(rate_rps: float, duration_s: float) -> int:
    """Requests whose arrivals at mean rate `rate_rps` span `duration_s`."""
    rate = check_positive(rate_rps, "rate_rps")
    duration = check_positive(duration_s, "duration_s")
    return math.ceil(rate * duration) + 1


def loop_trace(trace: Trace, num_requests: int) -> Trace:
    """The trace's first `num_requests` requests, repeating it end to end where it has fewer:
    each copy starts one mean inter-arrival gap after the previous copy's last arrival."""
    check_int(num_requests, "num_requests", minimum=1)
    if trace.num_requests >= num_requests:
        return _head(trace, num_requests)
    rate = trace.mean_rate_rps
    if rate is None:
        raise ValueError(f"trace {trace.source} has no arrival rate to loop it at")
    period_s = float(trace.arrivals_s[-1] - trace.arrivals_s[0]) + 1.0 / rate
    copies = math.ceil(num_requests / trace.num_requests)
    offsets = np.repeat(np.arange(copies) * period_s, trace.num_requests)
    looped = Trace(
        source=f"{trace.source} (looped x{copies})",
        arrivals_s=np.tile(trace.arrivals_s, copies) + offsets,
        prompt_lens=np.tile(trace.prompt_lens, copies),
        output_lens=np.tile(trace.output_lens, copies),
    )
    return _head(looped, num_requests)


def steady_workload(
    *, seed: int, slo_mix: SLOMix, rate_rps: float, duration_s: float, **kwargs: Any
) -> Workload:
    """`build_workload` with `steady_num_requests(rate_rps, duration_s)` requests at
    `rate_rps`: a `trace` (a `Trace`) is looped where it is too short; synthetic arrivals are
    drawn in that number. Other keyword arguments go to `build_workload` as they are."""
    num_requests = steady_num_requests(rate_rps, duration_s)
    if "num_requests" in kwargs:
        raise ValueError("invalid parameter 'num_requests': the rate and duration set it")
    trace = kwargs.pop("trace", None)
    if trace is not None:
        if not isinstance(trace, Trace):
            raise ValueError("invalid parameter 'trace': a steady workload needs a read Trace")
        trace = loop_trace(trace, num_requests)
    return build_workload(
        seed=seed,
        slo_mix=slo_mix,
        trace=trace,
        num_requests=num_requests,
        rate_rps=rate_rps,
        **kwargs,
    )


def _head(trace: Trace, count: int) -> Trace:
    return Trace(
        trace.source, trace.arrivals_s[:count], trace.prompt_lens[:count], trace.output_lens[:count]
    )
