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
    rates: tuple[float, ...] = ()  # the bins' rates, oldest first (the last ends now)
    bin_s: float = 0.0  # their width

    def at(self, horizon_s: float) -> float:
        """The rate `horizon_s` seconds after the window's end, never below zero."""
        return max(self.level + self.slope * horizon_s, 0.0)

    def ahead(self, horizon_s: float) -> float:
        """The rate to plan for over the next `horizon_s` seconds: the forecast when demand
        rises, and no less than the window mean when it falls (demand that fell may come back
        before a scale-in could be undone)."""
        return max(self.at(horizon_s), self.mean, 0.0)

    def noise(self) -> tuple[float, ...]:
        """Each bin's rate over the fitted line at that bin (1.0: on the line, or where the
        line is at zero): the window's variability around its trend, to scale a forecast by.
        Empty without bins."""
        n = len(self.rates)
        ratios = []
        for i, rate in enumerate(self.rates):
            fitted = self.level + self.slope * (i - n + 0.5) * self.bin_s
            ratios.append(rate / fitted if fitted > 0 else 1.0)
        return tuple(ratios)


ZERO_TREND = Trend(0.0, 0.0, 0.0, 0.0, 0)


# A slope is kept only when it is significant at 95% (two-sided Student t, by degrees of freedom
# n - 2; 2.0 from 30 on): otherwise the line is flat at the mean, the better estimate of a
# steady rate.
_T_95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


def slope_t(dof: int) -> float:
    """The 95% two-sided Student t critical value for `dof` >= 1 degrees of freedom."""
    if dof < 1:
        return math.inf
    return _T_95[dof - 1] if dof <= len(_T_95) else 2.0 + 2.3 / dof


def fit_trend(rates: Sequence[float], bin_s: float, min_bins_for_slope: int = 4) -> Trend:
    """Fit `rates` (oldest first, one per bin of `bin_s` seconds ending now). With fewer than
    `min_bins_for_slope` bins, or a slope not significant at 95% (`slope_t`), the line is
    flat at the mean: a slope through a few noisy bins, extrapolated a start-up ahead, would
    mostly project the noise (Poisson arrivals of long prompts vary by about 10% per 5-s bin,
    which through four bins makes a slope that moves the forecast 13 s ahead by as much)."""
    if not bin_s > 0:
        raise ValueError(f"invalid 'bin_s': must be > 0, got {bin_s}")
    n = len(rates)
    if n == 0:
        return ZERO_TREND
    mean = math.fsum(rates) / n
    bins = tuple(rates)
    if n < max(min_bins_for_slope, 2):
        return Trend(mean, 0.0, mean, max(rates), n, bins, bin_s)
    # Bin centres relative to now: the last bin is centred half a bin before the window's end.
    times = [(i - n + 0.5) * bin_s for i in range(n)]
    mean_t = math.fsum(times) / n
    var_t = math.fsum((t - mean_t) ** 2 for t in times)
    cov = math.fsum((t - mean_t) * (r - mean) for t, r in zip(times, rates, strict=True))
    slope = cov / var_t
    residual = math.fsum(
        (r - mean - slope * (t - mean_t)) ** 2 for t, r in zip(times, rates, strict=True)
    )
    stderr = math.sqrt(residual / (n - 2) / var_t) if n > 2 else math.inf
    if abs(slope) <= slope_t(n - 2) * stderr:
        return Trend(mean, 0.0, mean, max(rates), n, bins, bin_s)
    level = mean + slope * (0.0 - mean_t)
    return Trend(max(level, 0.0), slope, mean, max(rates), n, bins, bin_s)
