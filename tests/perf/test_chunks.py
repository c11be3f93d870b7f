"""Closed-form chunk sizing: every model's `max_prefill_tokens` gives bisection's answer."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperflexis.perf.analytic import AnalyticCostModel
from hyperflexis.perf.base import StepCostModel, StepFeatures, largest_chunk, max_prefill_tokens
from hyperflexis.perf.chunks import largest_root, refine_chunk
from hyperflexis.perf.online import OnlineCorrection
from hyperflexis.perf.profiled import ProfiledCostModel
from hyperflexis.perf.specs import hardware_spec, model_spec

ANALYTIC = [
    AnalyticCostModel(hardware_spec("h100"), model_spec("llama-3.1-8b")),
    AnalyticCostModel(hardware_spec("a100-80gb"), model_spec("llama-3.1-70b")),
]
coefficient = st.floats(0, 1e-3)
profiled = st.builds(
    lambda c: ProfiledCostModel(
        (c[0] * 10, c[1] / 10, c[2] / 1e5, c[3] / 10, c[4] / 1e3)  # spread the magnitudes
    ),
    st.tuples(coefficient, coefficient, coefficient, coefficient, coefficient),
)
analytic = st.sampled_from(ANALYTIC)
online = st.builds(
    lambda model, bias: _biased(model, bias), st.one_of(analytic, profiled), st.floats(0.5, 2.0)
)


def _biased(model: StepCostModel, bias: float) -> OnlineCorrection:
    corrected = OnlineCorrection(model, alpha=1.0)
    corrected.observe(
        StepFeatures.of(decodes=[100]), model.predict(StepFeatures.of(decodes=[100])) * bias
    )
    return corrected


bases = st.builds(
    StepFeatures.of,
    st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 32_000)), max_size=3),
    st.lists(st.integers(1, 32_000), max_size=64),
)


@settings(max_examples=300, deadline=None)
@given(
    model=st.one_of(analytic, profiled, online),
    base=bases,
    ctx=st.integers(0, 64_000),
    budget_s=st.floats(0, 0.5),
    max_tokens=st.integers(0, 16_384),
)
def test_closed_form_matches_bisection(
    model: AnalyticCostModel | ProfiledCostModel | OnlineCorrection,
    base: StepFeatures,
    ctx: int,
    budget_s: float,
    max_tokens: int,
) -> None:
    expected = largest_chunk(model, base, ctx, max_tokens, budget_s)
    assert model.max_prefill_tokens(base, ctx, budget_s, max_tokens) == expected
    assert max_prefill_tokens(model, base, ctx, budget_s, max_tokens) == expected


class _NoSolver:
    """A monotone model without a closed form: the helper must bisect."""

    def predict(self, features: StepFeatures) -> float:
        return 0.001 * features.num_prefill_tokens**0.5 + 0.01 * features.num_decodes


def test_helper_bisects_models_without_a_solver() -> None:
    model = _NoSolver()
    base = StepFeatures.of(decodes=[10])
    # 0.01 + 0.001 * sqrt(n) <= 0.05  <=>  n <= 1600
    assert max_prefill_tokens(model, base, 0, 0.05, 10_000) == 1600


def test_edge_budgets() -> None:
    model = ANALYTIC[0]
    base = StepFeatures.of(decodes=[1000] * 4)
    assert model.max_prefill_tokens(base, 0, math.inf, 4096) == 4096
    assert model.max_prefill_tokens(base, 0, math.nan, 4096) == 0
    assert model.max_prefill_tokens(base, 0, 0.0, 4096) == 0
    assert model.max_prefill_tokens(base, 0, 1.0, 0) == 0


def test_refine_recovers_from_a_bad_estimate() -> None:
    model = ProfiledCostModel((0.0, 1e-3, 0.0, 0.0, 0.0))
    base = StepFeatures()
    # The answer is 500; estimates off by more than a few tokens fall back to bisection.
    for estimate in (0.0, 498.0, 500.0, 503.0, 10_000.0):
        assert refine_chunk(model, base, 0, 0.5, 8192, estimate) == 500


@pytest.mark.parametrize(
    ("a", "b", "slack", "root"),
    [(0.0, 2.0, 10.0, 5.0), (1.0, 0.0, 9.0, 3.0), (1.0, 2.0, 8.0, 2.0), (0.0, 0.0, 1.0, math.inf)],
)
def test_largest_root(a: float, b: float, slack: float, root: float) -> None:
    assert largest_root(a, b, slack) == pytest.approx(root)
    assert largest_root(a, b, -1.0) == 0.0
