"""Online correction: a running factor between predicted and measured step times.

A real instance drifts from its profile (other tenants, clocks, a different driver); the engine
loop reports each step's measured time and the scheduler's predictions are scaled to match.
"""

from __future__ import annotations

import math

from hyperflexis.perf.base import StepCostModel, StepFeatures, max_prefill_tokens
from hyperflexis.perf.chunks import refine_chunk
from hyperflexis.perf.profiled import NUM_COEFFICIENTS, feature_vector

RatioMoments = tuple[int, float, float]  # (count, sum, sum of squares) of step-time ratios
STEP_KINDS = ("prefill", "decode")  # steps with prefill tokens; decode-only steps
FIT_MOMENTS = NUM_COEFFICIENTS * NUM_COEFFICIENTS + NUM_COEFFICIENTS + 2


class OnlineCorrection:
    """Wraps a model; predicts `model.predict(f) * factor`, where `factor` is an exponentially
    weighted mean of measured/predicted ratios, clamped to [min_factor, max_factor] (each ratio is
    clamped too, so one stalled step cannot swing it). Monotone if the wrapped model is."""

    __slots__ = (
        "_factor",
        "alpha",
        "fit_moments",
        "max_factor",
        "min_factor",
        "model",
        "num_observations",
        "ratio_moments",
    )

    def __init__(
        self,
        model: StepCostModel,
        alpha: float = 0.1,
        min_factor: float = 0.5,
        max_factor: float = 2.0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"invalid 'alpha': must be in (0, 1], got {alpha}")
        if not 0 < min_factor <= 1:
            raise ValueError(f"invalid 'min_factor': must be in (0, 1], got {min_factor}")
        if not 1 <= max_factor < math.inf:
            raise ValueError(f"invalid 'max_factor': must be >= 1 and finite, got {max_factor}")
        self.model = model  # the wrapped model
        self.alpha = alpha  # weight of the newest ratio
        self.min_factor = min_factor
        self.max_factor = max_factor
        self.num_observations = 0  # measurements used so far
        # Per kind of step (`STEP_KINDS`), of every observed measured/predicted ratio,
        # unclamped: (count, sum, sum of squares), cumulative, so a reader takes a window's mean
        # and spread from two readings.
        self.ratio_moments: dict[str, RatioMoments] = dict.fromkeys(STEP_KINDS, (0, 0.0, 0.0))
        # The normal equations of the linear model's least squares over every observed step
        # (x = `feature_vector`, y = measured: sum of x x^T row by row, sum of x y, sum of y^2,
        # count), cumulative: two readings refit the model on a window's own steps.
        self.fit_moments = [0.0] * FIT_MOMENTS
        self._factor = 1.0

    def __repr__(self) -> str:
        return f"OnlineCorrection({self.model!r}, factor={self._factor:.3f})"

    @property
    def factor(self) -> float:
        """Current measured/predicted ratio applied to the wrapped model."""
        return self._factor

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
        raw = measured_s / predicted_s
        kind = "prefill" if features.num_prefill_tokens else "decode"
        count, total, total_sq = self.ratio_moments[kind]
        self.ratio_moments[kind] = (count + 1, total + raw, total_sq + raw * raw)
        self._fold_fit(features, measured_s)
        ratio = min(max(raw, self.min_factor), self.max_factor)
        factor = (1 - self.alpha) * self._factor + self.alpha * ratio
        self._factor = min(max(factor, self.min_factor), self.max_factor)
        self.num_observations += 1

    def _fold_fit(self, features: StepFeatures, measured_s: float) -> None:
        row = feature_vector(features)
        moments, k = self.fit_moments, 0
        for a in row:
            for b in row:
                moments[k] += a * b
                k += 1
        for a in row:
            moments[k] += a * measured_s
            k += 1
        moments[k] += measured_s * measured_s
        moments[k + 1] += 1.0

    def max_prefill_tokens(
        self, features_base: StepFeatures, ctx_before: int, budget_s: float, max_tokens: int
    ) -> int:
        """The wrapped model's chunk for `budget_s / factor`, checked against this model."""
        estimate = max_prefill_tokens(
            self.model, features_base, ctx_before, budget_s / self._factor, max_tokens
        )
        return refine_chunk(self, features_base, ctx_before, budget_s, max_tokens, estimate)
