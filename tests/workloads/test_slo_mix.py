"""SLO class mixes: parsing, normalisation, errors and seeded exact-share assignment."""

from __future__ import annotations

from collections import Counter

import pytest

from hyperflexis.core.slo import SLOClass, SLOClasses
from hyperflexis.workloads.slo_mix import SLOMix, assign_classes, parse_slo_mix

CLASSES = SLOClasses()


def test_ratios_are_normalised_in_given_order() -> None:
    mix = parse_slo_mix("interactive:3, standard:5 ,batch:2", CLASSES)
    assert mix.class_names == ("interactive", "standard", "batch")
    assert mix.fractions == pytest.approx((0.3, 0.5, 0.2))
    assert parse_slo_mix(str(mix), CLASSES) == mix


def test_bare_name_is_ratio_one() -> None:
    mix = parse_slo_mix("interactive,batch", CLASSES)
    assert mix.fractions == (0.5, 0.5)
    assert parse_slo_mix("standard", CLASSES) == SLOMix.single("standard")


def test_unknown_class_named_against_configured_classes() -> None:
    custom = SLOClasses((SLOClass("gold", 1.0, 0.05, 0),), default="gold")
    assert parse_slo_mix("gold:1", custom) == SLOMix.single("gold")
    with pytest.raises(ValueError, match=r"unknown SLO class 'interactive'.*known: gold"):
        parse_slo_mix("gold:1,interactive:1", custom)


@pytest.mark.parametrize(
    "spec",
    ["", "interactive:", ":0.3", "interactive:x", "interactive:0.3:1", "interactive:0.3,,batch:1"],
)
def test_malformed_spec_is_shown(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid SLO mix") as info:
        parse_slo_mix(spec, CLASSES)
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("interactive:-1,batch:1", "ratio for 'interactive'"),
        ("interactive:nan", "ratio for 'interactive'"),
        ("interactive:inf", "ratio for 'interactive'"),
        ("interactive:0,batch:0", "sum to 0"),
        ("batch:1,batch:2", "named twice"),
    ],
)
def test_bad_ratios(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        parse_slo_mix(spec, CLASSES)
    assert repr(spec) in str(info.value)


def test_zero_ratio_class_gets_nothing() -> None:
    mix = parse_slo_mix("interactive:0,batch:1", CLASSES)
    assert set(assign_classes(mix, 50, seed=0)) == {"batch"}


@pytest.mark.parametrize(
    ("num_requests", "expected"),
    [
        (10, {"interactive": 3, "standard": 5, "batch": 2}),
        # 2.1, 3.5, 1.4: floors 2, 3, 1, and the largest remainder (standard) gets the seventh.
        (7, {"interactive": 2, "standard": 4, "batch": 1}),
        (1000, {"interactive": 300, "standard": 500, "batch": 200}),
    ],
)
def test_assignment_has_exact_shares(num_requests: int, expected: dict[str, int]) -> None:
    mix = parse_slo_mix("interactive:0.3,standard:0.5,batch:0.2", CLASSES)
    assert Counter(assign_classes(mix, num_requests, seed=1)) == expected


def test_assignment_is_seeded() -> None:
    mix = parse_slo_mix("interactive:1,standard:1,batch:1", CLASSES)
    assert assign_classes(mix, 60, seed=3) == assign_classes(mix, 60, seed=3)
    assert assign_classes(mix, 60, seed=3) != assign_classes(mix, 60, seed=4)
    assert assign_classes(mix, 0, seed=3) == []
    with pytest.raises(ValueError, match="'num_requests'"):
        assign_classes(mix, -1, seed=0)


def test_mix_validates_itself() -> None:
    with pytest.raises(ValueError, match="'fractions'"):
        SLOMix(("a", "b"), (0.5, 0.6))
    with pytest.raises(ValueError, match="'class_names'"):
        SLOMix(("a", "a"), (0.5, 0.5))
