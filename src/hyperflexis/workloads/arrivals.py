"""Arrival processes: when requests reach the system, as seeded offsets from the workload start.

Each process is a frozen dataclass registered by name (`make_arrival("gamma", rate_rps=4,
burstiness=0.5)`). The first request arrives at 0 and the gaps between requests are drawn i.i.d.,
so `mean_rate_rps` of a long sample approaches `rate_rps`. Gaps are the standard variate times
`1 / rate_rps`: the same seed at another rate gives the same pattern stretched, which keeps rate
sweeps comparable point to point (common random numbers). An infinite rate sends everything at 0,
for throughput runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from hyperflexis.core.registry import Registry
from hyperflexis.workloads._checks import check_int, check_positive, make_registered


class ArrivalProcess(Protocol):
    """Draws arrival times; `rate_rps` is its long-run mean rate."""

    name: ClassVar[str]  # the registry name

    @property
    def rate_rps(self) -> float:
        """Mean requests per second (> 0; inf sends all at once)."""
        ...

    def gaps_s(self, num_gaps: int, rng: np.random.Generator) -> np.ndarray:
        """`num_gaps` inter-arrival times in seconds (float64, >= 0)."""
        ...


_ARRIVALS: Registry[type[Any]] = Registry("arrival process")
register_arrival = _ARRIVALS.register  # class decorator: add under its `name`
arrival_names = _ARRIVALS.names


def make_arrival(name: str, **params: float) -> ArrivalProcess:
    """The process registered as `name`, built from its keyword parameters."""
    process: ArrivalProcess = make_registered(_ARRIVALS, name, params)
    return process


def generate_arrivals(process: ArrivalProcess, num_requests: int, seed: int) -> np.ndarray:
    """`num_requests` non-decreasing arrival times in seconds, the first at 0."""
    check_int(num_requests, "num_requests", minimum=0)
    rng = np.random.default_rng(seed)
    return arrivals_from_rng(process, num_requests, rng)


def arrivals_from_rng(
    process: ArrivalProcess, num_requests: int, rng: np.random.Generator
) -> np.ndarray:
    """As `generate_arrivals`, drawing from a caller's generator (for composed seeding)."""
    check_int(num_requests, "num_requests", minimum=0)
    if num_requests == 0:
        return np.zeros(0, dtype=np.float64)
    if math.isinf(process.rate_rps):
        return np.zeros(num_requests, dtype=np.float64)
    gaps = process.gaps_s(num_requests - 1, rng)
    return np.concatenate(([0.0], np.cumsum(gaps, dtype=np.float64)))


def with_rate(process: ArrivalProcess, rate_rps: float) -> ArrivalProcess:
    """The same process at another mean rate (for rate sweeps)."""
    changed: ArrivalProcess = dataclasses.replace(process, rate_rps=rate_rps)  # type: ignore[type-var]
    return changed


@register_arrival
@dataclass(frozen=True, slots=True)
class PoissonArrivals:
    """Memoryless arrivals: exponential gaps."""

    name: ClassVar[str] = "poisson"
    rate_rps: float  # mean requests per second (> 0; inf sends all at once)

    def __post_init__(self) -> None:
        check_positive(self.rate_rps, "rate_rps", allow_inf=True)

    def gaps_s(self, num_gaps: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_exponential(num_gaps) / self.rate_rps


@register_arrival
@dataclass(frozen=True, slots=True)
class GammaArrivals:
    """Gamma gaps with shape `burstiness`, as vLLM's benchmark: the gaps' CV^2 is 1/burstiness,
    so burstiness < 1 is burstier than Poisson, 1 is Poisson, > 1 is smoother."""

    name: ClassVar[str] = "gamma"
    rate_rps: float  # mean requests per second (> 0; inf sends all at once)
    burstiness: float = 1.0  # gamma shape; scale is 1 / (rate_rps * burstiness)

    def __post_init__(self) -> None:
        check_positive(self.rate_rps, "rate_rps", allow_inf=True)
        check_positive(self.burstiness, "burstiness")

    def gaps_s(self, num_gaps: int, rng: np.random.Generator) -> np.ndarray:
        standard = rng.standard_gamma(self.burstiness, num_gaps) / self.burstiness
        return standard / self.rate_rps


@register_arrival
@dataclass(frozen=True, slots=True)
class ConstantArrivals:
    """Evenly spaced arrivals: no randomness, for calibration runs."""

    name: ClassVar[str] = "constant"
    rate_rps: float  # requests per second (> 0; inf sends all at once)

    def __post_init__(self) -> None:
        check_positive(self.rate_rps, "rate_rps", allow_inf=True)

    def gaps_s(self, num_gaps: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(num_gaps, 1.0 / self.rate_rps, dtype=np.float64)


def poisson(rate_rps: float) -> PoissonArrivals:
    return PoissonArrivals(rate_rps)


def gamma(rate_rps: float, burstiness: float) -> GammaArrivals:
    return GammaArrivals(rate_rps, burstiness)
