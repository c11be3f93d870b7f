"""Online correction: a running factor between predicted and measured step times.

A real instance drifts from its profile (other tenants, clocks, a different driver); the engine
loop reports each step's measured time and the scheduler's predictions are scaled to match.
SLOs are met or missed in the tail, so the factor covers the steps' scatter as well as their
bias: it is the running mean of measured/predicted plus `spread_weight` running mean absolute
deviations. A scheduler that plans on the mean lets half its steps overrun the budget, and a
request whose decode steps are budget-bound then ends a hair over its TPOT half the time.
"""

from __future__ import annotations

import math

from hyperflexis.perf.base import StepCostModel, StepFeatures, max_prefill_tokens
from hyperflexis.perf.chunks import refine_chunk


class OnlineCorrection:
    """Wraps a model; predicts `model.predict(f) * factor`, where `factor` is an exponentially
    weighted mean of measured/predicted ratios plus `spread_weight` exponentially weighted mean
    absolute deviations, clamped to [min_factor, max_factor] (each ratio is clamped too, so one
    stalled step cannot swing it). Monotone if the wrapped model is."""

    __slots__ = (
        "_deviation",
        "_factor",
        "_mean",
        "alpha",
        "max_factor",
        "min_factor",
        "model",
        "num_observations",
        "spread_weight",
    )

    def __init__(
        self,
        model: StepCostModel,
        alpha: float = 0.1,
        min_factor: float = 0.5,
        max_factor: float = 2.0,
        spread_weight: float = 1.0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"invalid 'alpha': must be in (0, 1], got {alpha}")
        if not 0 < min_factor <= 1:
            raise ValueError(f"invalid 'min_factor': must be in (0, 1], got {min_factor}")
        if not 1 <= max_factor < math.inf:
            raise ValueError(f"invalid 'max_factor': must be >= 1 and finite, got {max_factor}")
        if not 0 <= spread_weight < math.inf:
            raise ValueError(
                f"invalid 'spread_weight': must be >= 0 and finite, got {spread_weight}"
            )
        self.model = model  # the wrapped model
        self.alpha = alpha  # weight of the newest ratio
        self.min_factor = min_factor
        self.max_factor = max_factor
        self.spread_weight = spread_weight  # mean absolute deviations added to the mean ratio
        self.num_observations = 0  # measurements used so far
        self._mean = 1.0  # running mean of measured/predicted
        self._deviation = 0.0  # running mean absolute deviation from it
        self._factor = 1.0

    def __repr__(self) -> str:
        return f"OnlineCorrection({self.model!r}, factor={self._factor:.3f})"

    @property
    def factor(self) -> float:
        """Current measured/predicted ratio applied to the wrapped model (mean plus spread)."""
        return self._factor

    @property
    def mean_ratio(self) -> float:
        """The running mean of measured/predicted alone: the model's bias."""
        return self._mean

    def predict(self, features: StepFeatures) -> float:
        return self.model.predict(features) * self._factor

    def observe(self, features: StepFeatures, measured_s: float) -> None:
        """Fold in one step's measured time. Non-positive or non-finite measurements, and steps
        the wrapped model predicts as free, are ignored."""
        if not (math.isfinite(measured_s) and measured_s > 0):
            return
        predicted_s = self.model.predict(features)
        if not (math.isfinite(predicted_s) and predicted_s > 0):
            return
        ratio = min(max(measured_s / predicted_s, self.min_factor), self.max_factor)
        alpha = self.alpha
        self._deviation = (1 - alpha) * self._deviation + alpha * abs(ratio - self._mean)
        self._mean = (1 - alpha) * self._mean + alpha * ratio
        factor = self._mean + self.spread_weight * self._deviation
        self._factor = min(max(factor, self.min_factor), self.max_factor)
        self.num_observations += 1

    def max_prefill_tokens(
        self, features_base: StepFeatures, ctx_before: int, budget_s: float, max_tokens: int
    ) -> int:
        """The wrapped model's chunk for `budget_s / factor`, checked against this model."""
        estimate = max_prefill_tokens(
            self.model, features_base, ctx_before, budget_s / self._factor, max_tokens
        )
        return refine_chunk(self, features_base, ctx_before, budget_s, max_tokens, estimate)
