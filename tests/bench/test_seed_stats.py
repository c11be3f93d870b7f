"""Figures over seeds: the mean, sample standard deviation and range of each row's figure, and
ratios taken per seed, not as a ratio of means."""

from __future__ import annotations

import math

import pytest

from hyperflexis.bench.seed_stats import Spread, rows_over_seeds, seeds_table, spread


def test_spread_is_mean_sample_std_and_range() -> None:
    s = spread([1.0, 2.0, 3.0, 6.0])
    assert s == Spread(mean=3.0, std=pytest.approx(math.sqrt(14 / 3)), low=1.0, high=6.0, n=4)
    assert s is not None and s.text(1) == "3.0 ± 2.2 (1.0 to 6.0, n=4)"
    assert s.echo() == {"mean": 3.0, "std": s.std, "min": 1.0, "max": 6.0, "n": 4}


def test_one_value_has_no_spread_and_missing_values_are_skipped() -> None:
    assert spread([None, 5.0, None]) == Spread(5.0, 0.0, 5.0, 5.0, 1)
    assert spread([None]) is None
    assert spread([]) is None


def test_rows_over_seeds_keeps_first_seen_order_and_skips_absent_rows() -> None:
    by_seed = {0: {"a": 1.0, "b": 4.0}, 2: {"b": 6.0, "c": None}}
    out = rows_over_seeds(by_seed)
    assert list(out) == ["a", "b", "c"]
    assert out["a"] == Spread(1.0, 0.0, 1.0, 1.0, 1)
    assert out["b"] is not None and (out["b"].mean, out["b"].low, out["b"].high) == (5.0, 4, 6)
    assert out["c"] is None


def test_table_averages_the_per_seed_ratio_not_the_ratio_of_means() -> None:
    # Seed 0: ours 100 vs 50 (2x); seed 2: ours 10 vs 10 (1x). Mean ratio 1.5x, while the ratio of
    # the mean goodputs would be 55 / 30 = 1.83x.
    goodput = {0: {"ours": 100.0, "base": 50.0}, 2: {"ours": 10.0, "base": 10.0}}
    ratio = {0: {"base": 2.0}, 2: {"base": 1.0}}
    table = seeds_table(goodput, ratio, "goodput@90", "ours / row").splitlines()
    assert table[0].startswith("| row | goodput@90 on seeds 0, 2 |")
    assert table[2] == "| ours | 100.0, 10.0 | 55.0 ± 63.6 (10.0 to 100.0, n=2) |  |  |"
    assert table[3] == (
        "| base | 50.0, 10.0 | 30.0 ± 28.3 (10.0 to 50.0, n=2) | 2.00x, 1.00x "
        "| 1.50x ± 0.71 (1.00 to 2.00x, n=2) |"
    )
