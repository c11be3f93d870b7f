"""Online correction: converges to a constant bias, ignores garbage, stays clamped."""

from __future__ import annotations

import math

import pytest

from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.online import OnlineCorrection
from hyperflexis.perf.profiled import ProfiledCostModel

INNER = ProfiledCostModel((5e-3, 3e-5, 1e-9, 2e-4, 5e-8))


def shapes(num: int) -> list[StepFeatures]:
    return [StepFeatures.of([(64 * (i % 7 + 1), 100 * i)], [500 + i] * (i % 5)) for i in range(num)]


def test_converges_to_a_constant_bias() -> None:
    corrected = OnlineCorrection(INNER, alpha=0.1)
    for features in shapes(100):
        corrected.observe(features, 1.3 * INNER.predict(features))
    assert corrected.factor == pytest.approx(1.3, rel=1e-3)
    probe = StepFeatures.of([(256, 0)], [1000] * 8)
    assert corrected.predict(probe) == pytest.approx(1.3 * INNER.predict(probe), rel=1e-3)
    assert corrected.num_observations == 100


def test_ignores_non_positive_and_non_finite_measurements() -> None:
    corrected = OnlineCorrection(INNER)
    features = StepFeatures.of(decodes=[10])
    for measured in (0.0, -1.0, math.nan, math.inf):
        corrected.observe(features, measured)
    assert corrected.factor == 1.0 and corrected.num_observations == 0
    free = OnlineCorrection(ProfiledCostModel((0.0, 0.0, 0.0, 0.0, 0.0)))
    free.observe(features, 0.01)  # predicted 0 s: no ratio to take
    assert free.factor == 1.0


def test_clamped_and_outliers_bounded() -> None:
    corrected = OnlineCorrection(INNER, alpha=0.5, min_factor=0.8, max_factor=1.5)
    features = StepFeatures.of(decodes=[10])
    corrected.observe(features, 100 * INNER.predict(features))  # one stalled step
    assert corrected.factor == pytest.approx(1.25)  # ratio clamped to 1.5 before averaging
    for _ in range(50):
        corrected.observe(features, 100 * INNER.predict(features))
    assert corrected.factor == pytest.approx(1.5)
    for _ in range(50):
        corrected.observe(features, 0.01 * INNER.predict(features))
    assert corrected.factor == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"min_factor": 1.5}, "min_factor"),
        ({"max_factor": 0.5}, "max_factor"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OnlineCorrection(INNER, **kwargs)


def test_keeps_the_moments_of_every_raw_ratio_clamped_ones_included() -> None:
    corrected = OnlineCorrection(INNER, max_factor=2.0)
    features = StepFeatures.of(decodes=[10])
    predicted = INNER.predict(features)
    for ratio in (0.5, 1.5, 5.0):  # 5.0 is clamped for the factor, not for the moments
        corrected.observe(features, ratio * predicted)
    corrected.observe(features, math.nan)  # ignored: no ratio
    corrected.observe(
        StepFeatures.of([(64, 0)], [10]), 2 * INNER.predict(StepFeatures.of([(64, 0)], [10]))
    )
    count, total, total_sq = corrected.ratio_moments["decode"]
    assert corrected.ratio_moments["prefill"] == pytest.approx((1, 2.0, 4.0))
    assert count == 3
    assert total == pytest.approx(7.0)
    assert total_sq == pytest.approx(0.25 + 2.25 + 25.0)
