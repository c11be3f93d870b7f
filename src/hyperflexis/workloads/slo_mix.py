"""SLO class mixes: which share of requests belongs to which SLO class.

A mix is written as ratios, `"interactive:3,standard:5,batch:2"` or `"interactive:0.3,..."`;
ratios are normalised, and a bare name counts as ratio 1. Classes are assigned with exact counts
(largest remainder) in a seeded random order, so a mix holds exactly even for a few requests and
only the order, not the shares, changes with the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads._checks import check_int


@dataclass(frozen=True, slots=True)
class SLOMix:
    """Normalised class shares, in the order they were given."""

    class_names: tuple[str, ...]  # distinct SLO class names
    fractions: tuple[float, ...]  # share of each class; >= 0 and summing to 1

    def __post_init__(self) -> None:
        if not self.class_names or len(self.class_names) != len(self.fractions):
            raise ValueError(
                "invalid SLOMix: 'class_names' and 'fractions' must be non-empty and match"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(
                f"invalid SLOMix field 'class_names': duplicates in {self.class_names}"
            )
        if any(not math.isfinite(f) or f < 0 for f in self.fractions) or not math.isclose(
            sum(self.fractions), 1.0, rel_tol=1e-9
        ):
            raise ValueError(
                f"invalid SLOMix field 'fractions': {self.fractions} must be >= 0, sum 1"
            )

    @classmethod
    def single(cls, class_name: str) -> SLOMix:
        return cls((class_name,), (1.0,))

    @classmethod
    def from_ratios(
        cls, ratios: Iterable[tuple[str, float]], classes: SLOClasses | None = None
    ) -> SLOMix:
        """A mix from `(class name, ratio)` pairs; names are checked against `classes` if given."""
        pairs = list(ratios)
        names = [name for name, _ in pairs]
        for name, ratio in pairs:
            if classes is not None and name not in classes:
                known = ", ".join(sorted(classes))
                raise ValueError(f"unknown SLO class {name!r} in SLO mix; known: {known}")
            ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
            if not ok or not math.isfinite(ratio) or ratio < 0:
                raise ValueError(
                    f"invalid SLO mix ratio for {name!r}: expected >= 0, got {ratio!r}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"invalid SLO mix: a class is named twice in {names}")
        total = float(sum(ratio for _, ratio in pairs))
        if total <= 0:
            raise ValueError("invalid SLO mix: the ratios sum to 0")
        return cls(tuple(names), tuple(ratio / total for _, ratio in pairs))

    def __str__(self) -> str:
        return ",".join(
            f"{name}:{f:g}" for name, f in zip(self.class_names, self.fractions, strict=True)
        )

    def counts(self, num_requests: int) -> list[int]:
        """Requests per class for `num_requests`, by largest remainder (ties: earlier class)."""
        exact = [f * num_requests for f in self.fractions]
        counts = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in by_remainder[: num_requests - sum(counts)]:
            counts[i] += 1
        return counts


def parse_slo_mix(spec: str, classes: SLOClasses) -> SLOMix:
    """A mix from `"name:ratio,name:ratio,..."`; unknown class names raise ValueError."""
    pairs: list[tuple[str, float]] = []
    for item in spec.split(","):
        name, sep, ratio_text = (part.strip() for part in item.partition(":"))
        try:
            if not name or (sep and not ratio_text):
                raise ValueError
            ratio = float(ratio_text) if sep else 1.0
        except ValueError:
            raise ValueError(
                f"invalid SLO mix {spec!r}: expected 'name:ratio,...', "
                "e.g. 'interactive:0.3,standard:0.5,batch:0.2'"
            ) from None
        pairs.append((name, ratio))
    try:
        return SLOMix.from_ratios(pairs, classes)
    except ValueError as exc:
        raise ValueError(f"{exc} (SLO mix {spec!r})") from None


def assign_classes(mix: SLOMix, num_requests: int, seed: int) -> list[str]:
    """Class names for `num_requests` requests: exact shares, in a seeded order."""
    return assign_classes_from_rng(mix, num_requests, np.random.default_rng(seed))


def assign_classes_from_rng(mix: SLOMix, num_requests: int, rng: np.random.Generator) -> list[str]:
    """As `assign_classes`, drawing from a caller's generator (for composed seeding)."""
    check_int(num_requests, "num_requests", minimum=0)
    counts = mix.counts(num_requests)
    names = [name for name, n in zip(mix.class_names, counts, strict=True) for _ in range(n)]
    return [names[i] for i in rng.permutation(num_requests)]
