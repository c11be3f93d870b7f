"""Figures over workload seeds: a comparison run on several seeds (`bench/seeds.py`'s evaluation
seeds) reports each figure's mean and spread, and each ratio taken per seed, on that seed's own
requests, before it is averaged (a ratio of means would let one seed's outlier pair with
another's). The spread is the sample standard deviation and the range, min to max."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Spread:
    """The mean, sample standard deviation (0 for one value) and range of one figure over seeds."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 1, suffix: str = "") -> str:
        """`mean ± std (low to high, n=N)`, each with `digits` decimals and `suffix` (e.g. "x")."""
        f = f".{digits}f"
        return (
            f"{self.mean:{f}}{suffix} ± {self.std:{f}} "
            f"({self.low:{f}} to {self.high:{f}}{suffix}, n={self.n})"
        )

    def echo(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "min": self.low, "max": self.high, "n": self.n}


def spread(values: Iterable[float | None]) -> Spread | None:
    """The spread of the values that are not None; None when there are none."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return None
    mean = math.fsum(data) / len(data)
    var = math.fsum((v - mean) ** 2 for v in data) / (len(data) - 1) if len(data) > 1 else 0.0
    return Spread(mean=mean, std=math.sqrt(var), low=min(data), high=max(data), n=len(data))


def rows_over_seeds(
    by_seed: Mapping[int, Mapping[str, float | None]],
) -> dict[str, Spread | None]:
    """{seed: {row: figure}} -> {row: its spread over the seeds that have it}, rows in the
    order they first appear."""
    names = dict.fromkeys(name for figures in by_seed.values() for name in figures)
    return {name: spread(figures.get(name) for figures in by_seed.values()) for name in names}


def _cell(value: float | None, digits: int, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def seeds_table(
    figure: Mapping[int, Mapping[str, float | None]],
    ratio: Mapping[int, Mapping[str, float | None]],
    figure_name: str,
    ratio_name: str,
) -> str:
    """A markdown table, one line per row: its figure on each seed, the figure's mean ± std
    (range), and `ratio` (per seed, e.g. ours / that row) as mean ± std (range)."""
    seeds = list(figure)
    names = list(dict.fromkeys(name for figures in figure.values() for name in figures))
    figures, ratios = rows_over_seeds(figure), rows_over_seeds(ratio)
    lines = [
        f"| row | {figure_name} on seeds {', '.join(map(str, seeds))} | mean ± std (min to max) "
        f"| {ratio_name} per seed | mean ± std (min to max) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        per_seed = ", ".join(_cell(figure[s].get(name), 1) for s in seeds)
        ratio_cells = ", ".join(_cell(ratio.get(s, {}).get(name), 2, "x") for s in seeds)
        stat, rstat = figures.get(name), ratios.get(name)
        lines.append(
            f"| {name} | {per_seed} | {'n/a' if stat is None else stat.text(1)} | "
            f"{ratio_cells if rstat else ''} | {'' if rstat is None else rstat.text(2, 'x')} |"
        )
    return "\n".join(lines)
