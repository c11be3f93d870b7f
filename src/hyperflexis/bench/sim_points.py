"""One simulated run of a trace as the comparison scripts sweep them: a trace's first requests
time-scaled to a rate, with an SLO mix and a seed, on a `SimSetup`. Picklable, so a process pool
runs many; each process reads a trace once."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperflexis.core.slo import SLOClasses
from hyperflexis.sim.setup import SimSetup, simulate
from hyperflexis.workloads import (
    Trace,
    build_workload,
    parse_slo_mix,
    read_azure_trace,
    steady_workload,
)
from hyperflexis.workloads.spec import Workload

DEFAULT_SLO_MIX = "interactive:3,standard:5,batch:2"  # DESIGN.md §4's mix of the default classes


@dataclass(frozen=True, slots=True)
class TracePoint:
    """The first `num_requests` of `trace` at `rate_rps`, classes from `slo_mix`, on `setup`."""

    trace: str
    num_requests: int
    seed: int
    rate_rps: float
    setup: SimSetup
    slo_mix: str = DEFAULT_SLO_MIX
    # Steady state: this many seconds of arrivals at every rate, the whole trace extended and
    # looped (`workloads.steady_workload`); None: the first `num_requests`, a short replay.
    duration_s: float | None = None


@functools.lru_cache(maxsize=4)
def _trace(path: str, num_requests: int | None) -> Trace:
    return read_azure_trace(Path(path), max_requests=num_requests)


def point_workload(point: TracePoint) -> Workload:
    mix = parse_slo_mix(point.slo_mix, SLOClasses())
    if point.duration_s is not None:
        return steady_workload(
            seed=point.seed,
            slo_mix=mix,
            rate_rps=point.rate_rps,
            duration_s=point.duration_s,
            trace=_trace(point.trace, None),
        )
    trace = _trace(point.trace, point.num_requests)
    return build_workload(seed=point.seed, slo_mix=mix, trace=trace, rate_rps=point.rate_rps)


def longest_prompt(trace: str, num_requests: int) -> int:
    """The longest prompt among a trace's first `num_requests` (the seed and rate change only
    arrival times and classes, not lengths)."""
    workload = build_workload(
        seed=0,
        slo_mix=parse_slo_mix(DEFAULT_SLO_MIX, SLOClasses()),
        trace=_trace(trace, num_requests),
    )
    return max(spec.prompt_len for spec in workload)


def run_point(point: TracePoint) -> dict[str, Any]:
    """The run's summary as `simulate` returns it, with the rate and seed (the step noise's
    seed too)."""
    setup = dataclasses.replace(point.setup, noise_seed=point.seed)
    summary = simulate(setup, SLOClasses(), point_workload(point))
    return {"rate": point.rate_rps, "seed": point.seed, **summary}
