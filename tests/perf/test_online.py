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
    corrected = OnlineCorrection(
        INNER, alpha=0.5, min_factor=0.8, max_factor=1.5, spread_weight=0.0
    )
    features = StepFeatures.of(decodes=[10])
    corrected.observe(features, 100 * INNER.predict(features))  # one stalled step
    assert corrected.factor == pytest.approx(1.25)  # ratio clamped to 1.5 before averaging
    for _ in range(50):
        corrected.observe(features, 100 * INNER.predict(features))
    assert corrected.factor == pytest.approx(1.5)
    for _ in range(50):
        corrected.observe(features, 0.01 * INNER.predict(features))
    assert corrected.factor == pytest.approx(0.8)


def test_factor_covers_the_scatter_not_just_the_bias() -> None:
    """Steps scattered +-10% around the prediction: the mean ratio is 1, but planning on it
    would overrun half the steps; the factor adds the mean absolute deviation."""
    features = StepFeatures.of(decodes=[10])
    predicted = INNER.predict(features)
    plain = OnlineCorrection(INNER, spread_weight=0.0)
    covered = OnlineCorrection(INNER)
    for i in range(200):
        measured = (0.9 if i % 2 else 1.1) * predicted
        plain.observe(features, measured)
        covered.observe(features, measured)
    assert plain.factor == pytest.approx(1.0, abs=0.02)
    assert covered.mean_ratio == pytest.approx(1.0, abs=0.02)
    assert covered.factor == pytest.approx(1.1, abs=0.02)
    # One stalled step (ratio clamped to 2) moves it by at most alpha x (2 - 1) twice over.
    covered.observe(features, 100 * predicted)
    assert covered.factor < 1.1 + 2 * 0.1 * 1.0 + 0.02


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"min_factor": 1.5}, "min_factor"),
        ({"max_factor": 0.5}, "max_factor"),
        ({"spread_weight": -1.0}, "spread_weight"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OnlineCorrection(INNER, **kwargs)
