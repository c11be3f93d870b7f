"""Short-term demand forecast: a least-squares line through a window of per-bin rates.

A new instance takes a start-up time to serve, so the scaler must size the cluster for the demand
one start-up ahead. A straight line over the last minute is enough for that horizon; it reacts to
a ramp within a few bins, and its estimate at `now` averages the bins' noise out, where the last
bin alone would not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Trend:
    """A rate's fitted line, anchored at the end of the window."""

    level: float  # fitted rate at the window's end (now), per second
    slope: float  # change of the rate per second
    mean: float  # plain mean over the window's bins
    peak: float  # largest bin rate in the window
    num_bins: int  # bins the fit used

    def at(self, horizon_s: float) -> float:
        """The rate `horizon_s` seconds after the window's end, never below zero."""
        return max(self.level + self.slope * horizon_s, 0.0)

    def ahead(self, horizon_s: float) -> float:
        """The rate to plan for over the next `horizon_s` seconds: the forecast when demand
        rises, and no less than the window mean when it falls (demand that fell may come back
        before a scale-in could be undone)."""
        return max(self.at(horizon_s), self.mean, 0.0)


ZERO_TREND = Trend(0.0, 0.0, 0.0, 0.0, 0)


def fit_trend(rates: Sequence[float], bin_s: float, min_bins_for_slope: int = 4) -> Trend:
    """Fit `rates` (oldest first, one per bin of `bin_s` seconds ending now). With fewer than
    `min_bins_for_slope` bins the line is flat at the mean: a slope through two or three noisy
    bins, extrapolated a start-up ahead, would mostly project the noise."""
    if not bin_s > 0:
        raise ValueError(f"invalid 'bin_s': must be > 0, got {bin_s}")
    n = len(rates)
    if n == 0:
        return ZERO_TREND
    mean = math.fsum(rates) / n
    if n < max(min_bins_for_slope, 2):
        return Trend(mean, 0.0, mean, max(rates), n)
    # Bin centres relative to now: the last bin is centred half a bin before the window's end.
    times = [(i - n + 0.5) * bin_s for i in range(n)]
    mean_t = math.fsum(times) / n
    var_t = math.fsum((t - mean_t) ** 2 for t in times)
    cov = math.fsum((t - mean_t) * (r - mean) for t, r in zip(times, rates, strict=True))
    slope = cov / var_t
    level = mean + slope * (0.0 - mean_t)
    return Trend(max(level, 0.0), slope, mean, max(rates), n)
