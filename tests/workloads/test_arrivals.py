"""Arrival processes: seeding, mean rate, burstiness, registry and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyperflexis.workloads.arrivals import (
    ConstantArrivals,
    arrival_names,
    gamma,
    generate_arrivals,
    make_arrival,
    poisson,
    with_rate,
)
from hyperflexis.workloads.spec import mean_rate_rps

N = 200_000  # enough for the rate within 1% and the CV within a few % (several sigma)


def cv(arrivals: np.ndarray) -> float:
    gaps = np.diff(arrivals)
    return float(gaps.std() / gaps.mean())


def test_registry_names_and_construction() -> None:
    assert {"poisson", "gamma", "constant"} <= set(arrival_names())
    assert make_arrival("gamma", rate_rps=2.0, burstiness=0.5) == gamma(2.0, 0.5)
    assert make_arrival("poisson", rate_rps=3) == poisson(3)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("weibull", {"rate_rps": 1.0}, "weibull"),
        ("poisson", {"rate": 1.0}, "'rate'"),
        ("gamma", {"burstiness": 2.0}, "'rate_rps'"),
        ("poisson", {"rate_rps": 0.0}, "'rate_rps'"),
        ("poisson", {"rate_rps": -1.0}, "'rate_rps'"),
        ("poisson", {"rate_rps": math.nan}, "'rate_rps'"),
        ("gamma", {"rate_rps": 1.0, "burstiness": 0.0}, "'burstiness'"),
        ("gamma", {"rate_rps": 1.0, "burstiness": math.inf}, "'burstiness'"),
    ],
)
def test_invalid_parameters_are_named(name: str, params: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        make_arrival(name, **params)


def test_invalid_count_is_named() -> None:
    with pytest.raises(ValueError, match="'num_requests'"):
        generate_arrivals(poisson(1.0), -1, seed=0)


def test_same_seed_same_arrivals_other_seed_different() -> None:
    a = generate_arrivals(gamma(5.0, 0.5), 1000, seed=7)
    b = generate_arrivals(gamma(5.0, 0.5), 1000, seed=7)
    c = generate_arrivals(gamma(5.0, 0.5), 1000, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_shape_first_at_zero_non_decreasing() -> None:
    arrivals = generate_arrivals(poisson(10.0), 500, seed=0)
    assert arrivals.shape == (500,)
    assert arrivals[0] == 0.0
    assert np.all(np.diff(arrivals) >= 0)
    assert generate_arrivals(poisson(10.0), 0, seed=0).shape == (0,)
    np.testing.assert_array_equal(generate_arrivals(poisson(10.0), 1, seed=0), [0.0])


def test_poisson_mean_rate_and_cv() -> None:
    arrivals = generate_arrivals(poisson(4.0), N, seed=1)
    rate = mean_rate_rps(arrivals)
    assert rate is not None
    assert rate == pytest.approx(4.0, rel=0.01)
    assert cv(arrivals) == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_burstiness_sets_cv_not_rate(burstiness: float) -> None:
    arrivals = generate_arrivals(gamma(4.0, burstiness), N, seed=2)
    assert mean_rate_rps(arrivals) == pytest.approx(4.0, rel=0.02)
    # burstiness = 1 / CV^2
    assert cv(arrivals) == pytest.approx(1.0 / math.sqrt(burstiness), rel=0.05)


def test_burstier_means_larger_cv() -> None:
    cvs = [cv(generate_arrivals(gamma(1.0, b), 20_000, seed=3)) for b in (0.2, 1.0, 5.0)]
    assert cvs[0] > cvs[1] > cvs[2]


def test_same_seed_other_rate_is_the_same_pattern_stretched() -> None:
    slow = generate_arrivals(gamma(2.0, 0.5), 100, seed=4)
    fast = generate_arrivals(with_rate(gamma(2.0, 0.5), 8.0), 100, seed=4)
    np.testing.assert_allclose(slow, fast * 4.0)


def test_with_rate_validates() -> None:
    with pytest.raises(ValueError, match="'rate_rps'"):
        with_rate(poisson(1.0), 0.0)


def test_constant_and_infinite_rate() -> None:
    np.testing.assert_allclose(
        generate_arrivals(ConstantArrivals(4.0), 5, seed=0), [0.0, 0.25, 0.5, 0.75, 1.0]
    )
    np.testing.assert_array_equal(generate_arrivals(poisson(math.inf), 3, seed=0), [0, 0, 0])
