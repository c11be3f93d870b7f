"""`LinkTable`: policies, invariants under random scale-out/in and role flips, and churn."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperflexis.cluster import LinkTable


def links_per_prefill(fanout: int, num_prefills: int, num_decodes: int) -> int:
    """`fanout`, raised so the prefill instances' links reach every decode instance."""
    return min(max(fanout, math.ceil(num_decodes / max(num_prefills, 1))), num_decodes)


def check_invariants(table: LinkTable, fanout: int) -> None:
    links = table.links()
    decodes = table.decode_ids
    assert set(links) == table.prefill_ids
    for p, linked in links.items():
        assert linked <= decodes
        if table.policy == "all":
            assert linked == decodes
        else:
            assert len(linked) == links_per_prefill(fanout, len(links), len(decodes))
        if decodes:
            assert linked, f"{p} has no link"
        for d in decodes:
            assert table.is_linked(p, d) == (d in linked)
    degrees = table.in_degrees()
    if degrees:
        assert max(degrees.values()) - min(degrees.values()) <= 1
    if links:  # no decode instance is left idle
        assert all(any(d in linked for linked in links.values()) for d in decodes)


ops = st.lists(
    st.tuples(st.sampled_from(["add_prefill", "add_decode", "remove", "flip"]), st.integers(0, 9)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, policy=st.sampled_from(["all", "balanced", "pairs"]), fanout=st.integers(1, 4))
def test_invariants_hold_under_random_changes(
    ops: list[tuple[str, int]], policy: str, fanout: int
) -> None:
    table = LinkTable(policy, fanout)  # type: ignore[arg-type]
    effective_fanout = 1 if policy == "pairs" else fanout
    for op, n in ops:
        name = f"i{n}"
        present = name in table.prefill_ids or name in table.decode_ids
        num_prefills, num_decodes = len(table.prefill_ids), len(table.decode_ids)
        if op == "remove" and present:
            table.remove(name)
        elif op == "flip" and present:  # a role transition: out, then back in the other role
            was_prefill = name in table.prefill_ids
            table.remove(name)
            (table.add_decode if was_prefill else table.add_prefill)(name)
        elif op == "add_prefill" and not present:
            num_changes = table.add_prefill(name)
            before = links_per_prefill(effective_fanout, num_prefills, num_decodes)
            after = links_per_prefill(effective_fanout, num_prefills + 1, num_decodes)
            if policy == "all":
                assert num_changes == num_decodes
            elif before == after or num_prefills == 0:
                # The new prefill takes the least linked decodes; nothing else moves.
                assert num_changes == after
        elif op == "add_decode" and not present:
            num_changes = table.add_decode(name)
            per_prefill = links_per_prefill(effective_fanout, num_prefills, num_decodes)
            if (
                policy != "all"
                and num_decodes >= per_prefill
                and num_decodes < (num_prefills * per_prefill)
            ):
                # Only links moved onto the new decode: two changes each, about E / D of them.
                num_links = num_prefills * per_prefill
                assert num_changes <= 2 * math.ceil(num_links / (num_decodes + 1))
        check_invariants(table, effective_fanout)


def test_pairs_builds_the_distserve_pairing() -> None:
    table = LinkTable.build(["p0", "p1", "p2"], ["d0", "d1"], policy="pairs")
    assert table.links() == {
        "p0": frozenset({"d0"}),
        "p1": frozenset({"d1"}),
        "p2": frozenset({"d0"}),
    }


def test_all_links_everything_and_balanced_spreads() -> None:
    every = LinkTable.build(["p0", "p1"], ["d0", "d1", "d2"], policy="all")
    assert all(linked == {"d0", "d1", "d2"} for linked in every.links().values())
    balanced = LinkTable.build([f"p{k}" for k in range(3)], ["d0", "d1", "d2"], fanout=2)
    assert sorted(balanced.in_degrees().values()) == [2, 2, 2]


def test_a_prefill_without_decodes_gets_links_when_one_arrives() -> None:
    table = LinkTable("balanced", 2)
    table.add_prefill("p0")
    assert table.links() == {"p0": frozenset()}
    table.add_decode("d0")
    assert table.links() == {"p0": frozenset({"d0"})}


def test_invalid_arguments_fail_loudly() -> None:
    with pytest.raises(ValueError, match="policy"):
        LinkTable("mesh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fanout"):
        LinkTable("balanced", 0)
    table = LinkTable()
    table.add_prefill("a")
    with pytest.raises(ValueError, match="already"):
        table.add_decode("a")
    with pytest.raises(ValueError, match="unknown"):
        table.remove("b")
