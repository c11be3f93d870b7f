"""Synthetic length distributions, the compact spec parser and fitting lengths to a model."""

from __future__ import annotations

import numpy as np
import pytest

from hyperflexis.workloads.lengths import (
    FixedLengths,
    LogNormalLengths,
    UniformLengths,
    fit_lengths,
    length_names,
    make_lengths,
    parse_lengths,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_fixed() -> None:
    np.testing.assert_array_equal(FixedLengths(7).sample(3, rng()), [7, 7, 7])


def test_uniform_covers_both_ends_only() -> None:
    values = UniformLengths(3, 5).sample(2000, rng())
    assert set(values.tolist()) == {3, 4, 5}
    np.testing.assert_array_equal(UniformLengths(9, 9).sample(4, rng()), [9] * 4)


def test_lognormal_hits_target_mean_and_is_seeded() -> None:
    dist = LogNormalLengths(mean=200.0, sigma=0.5)
    values = dist.sample(100_000, rng(1))
    assert values.dtype == np.int64
    assert values.min() >= 1
    assert values.mean() == pytest.approx(200.0, rel=0.02)
    np.testing.assert_array_equal(dist.sample(50, rng(2)), dist.sample(50, rng(2)))


def test_lognormal_clip() -> None:
    values = LogNormalLengths(mean=50.0, sigma=2.0, max_len=64).sample(10_000, rng())
    assert values.max() == 64
    assert values.min() >= 1


def test_parse_forms() -> None:
    assert parse_lengths("128") == FixedLengths(128)
    assert parse_lengths("fixed:value=3") == FixedLengths(3)
    assert parse_lengths("uniform:lo=1, hi=4") == UniformLengths(1, 4)
    assert parse_lengths("lognormal:mean=256,sigma=0.8") == LogNormalLengths(256, 0.8)
    assert {"fixed", "uniform", "lognormal"} <= set(length_names())


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("uniform:lo=5", "missing parameter 'hi'"),
        ("uniform:lo=5,hi=2", "'hi'"),
        ("uniform:lo=a,hi=2", "invalid length spec 'uniform:lo=a,hi=2'"),
        ("uniform:lo", "invalid length spec"),
        ("zipf:a=1", "unknown length distribution 'zipf'"),
        ("fixed:size=3", "'size'"),
        ("0", "'value'"),
        ("lognormal:mean=0.5", "'mean'"),
        ("lognormal:mean=10,sigma=-1", "'sigma'"),
    ],
)
def test_parse_errors(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_lengths(spec)


def test_make_lengths_unknown() -> None:
    with pytest.raises(ValueError, match="known: "):
        make_lengths("nope")


def test_fit_scales_then_clips_and_keeps_at_least_one() -> None:
    prompts, outputs = fit_lengths(
        np.array([1000, 10, 0]), np.array([200, 1, 0]), length_scale=0.1, max_prompt_len=50
    )
    np.testing.assert_array_equal(prompts, [50, 1, 1])
    np.testing.assert_array_equal(outputs, [20, 1, 1])


def test_fit_scale_keeps_shape() -> None:
    prompts, _ = fit_lengths(np.array([100, 200, 400]), np.array([1, 1, 1]), length_scale=0.5)
    np.testing.assert_array_equal(prompts, [50, 100, 200])


def test_fit_total_cuts_output_then_prompt() -> None:
    prompts, outputs = fit_lengths(
        np.array([100, 5, 100]), np.array([5, 100, 100]), max_total_len=50
    )
    np.testing.assert_array_equal(outputs, [5, 49, 49])
    np.testing.assert_array_equal(prompts, [45, 1, 1])
    assert np.all(prompts + outputs <= 50)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"length_scale": 0.0}, "'length_scale'"),
        ({"max_prompt_len": 0}, "'max_prompt_len'"),
        ({"max_output_len": 1.5}, "'max_output_len'"),
        ({"max_total_len": 1}, "'max_total_len'"),
    ],
)
def test_fit_validation(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        fit_lengths(np.array([1]), np.array([1]), **kwargs)  # type: ignore[arg-type]


def test_fit_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="equal size"):
        fit_lengths(np.array([1, 2]), np.array([1]))
