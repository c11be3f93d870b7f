"""Baseline dispatchers: round-robin, least-loaded and distserve."""

from __future__ import annotations

from collections import Counter

import pytest

from hyperflexis.cluster import LinkTable, LoadSnapshot, dispatcher_names, make_dispatcher
from hyperflexis.cluster.dispatcher import Dispatcher
from tests.cluster.helpers import CONFIG, LinearCost, req, snap


def make(name: str) -> Dispatcher:
    return make_dispatcher(name, LinearCost(), CONFIG)


def test_every_policy_is_registered() -> None:
    assert dispatcher_names() == ["distserve", "hyperflexis", "least-loaded", "round-robin"]


def test_unknown_dispatcher_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown dispatcher 'nope'") as error:
        make("nope")
    for name in dispatcher_names():
        assert name in str(error.value)


@pytest.mark.parametrize("name", ["round-robin", "distserve"])
def test_round_robin_cycles_deterministically_over_takers(name: str) -> None:
    d = make(name)
    snapshots = [
        snap("c"),
        snap("a"),
        snap("b", draining=True),
        snap("d", role="decode"),
        snap("e", role="prefill"),
    ]
    chosen = [d.choose(req(), snapshots, 0.0).instance_id for _ in range(6)]
    assert chosen == ["a", "c", "e", "a", "c", "e"]
    # An instance joining mid-rotation is taken in its sorted place, without a reset.
    snapshots.append(snap("b2"))
    assert [d.choose(req(), snapshots, 0.0).instance_id for _ in range(3)] == ["a", "b2", "c"]


def test_round_robin_with_no_taker() -> None:
    decision = make("round-robin").choose(req(), [snap("a", draining=True)], 0.0)
    assert decision.instance_id is None and decision.reason == "no-instance"


def test_least_loaded_takes_fewest_requests_then_free_kv_then_id() -> None:
    d = make("least-loaded")
    busy = snap("a", num_running=3, num_waiting=2)
    light = snap("b", num_running=1, num_waiting=1, num_free_blocks=50_000)
    light_more_kv = snap("c", num_running=2, num_waiting=0, num_free_blocks=60_000)
    assert d.choose(req(), [busy, light, light_more_kv], 0.0).instance_id == "c"
    fresh = make("least-loaded")
    assert fresh.choose(req(), [snap("y"), snap("x")], 0.0).instance_id == "x"


def test_least_loaded_spreads_a_burst_between_snapshots() -> None:
    d = make("least-loaded")
    snapshots = [snap(f"i{k}", num_running=k) for k in range(3)]  # loads 0, 1, 2
    chosen = [d.choose(req(f"r{n}"), snapshots, 0.5).instance_id for n in range(6)]
    # Loads level out: i0 takes 3, i1 takes 2, i2 takes 1 (all reach 3).
    assert Counter(chosen) == {"i0": 3, "i1": 2, "i2": 1}
    # A newer snapshot includes them, so they stop counting.
    newer = [snap(f"i{k}", time_s=1.0, num_running=5 - k) for k in range(3)]
    assert d.choose(req(), newer, 1.0).instance_id == "i2"


def test_distserve_hands_each_prefill_to_its_static_pair() -> None:
    prefills: list[LoadSnapshot] = []  # as a driver may pass: decode instances only
    decodes = [snap(f"d{k}", role="decode", num_free_blocks=10 + k) for k in range(2)]
    d = make("distserve")

    def pairing(links: dict[str, frozenset[str]], snapshots: list[LoadSnapshot]) -> dict:
        return {
            p: d.choose_decode(req(), p, snapshots, links, 0.0).instance_id
            for p in ("p0", "p1", "p2", "p3")
        }

    expected = {"p0": "d0", "p1": "d1", "p2": "d0", "p3": "d1"}
    pairs = LinkTable.build(["p0", "p1", "p2", "p3"], ["d0", "d1"], policy="pairs")
    assert pairing(pairs.links(), prefills + decodes) == expected
    # Linked to every decode instance, prefill i still hands to decode i mod D, not to the one
    # with the most free KV.
    every = LinkTable.build(["p0", "p1", "p2", "p3"], ["d0", "d1"], policy="all")
    assert pairing(every.links(), prefills + decodes) == expected
    # A draining partner: the next linked one takes over; none left: nowhere.
    draining = [snap("d0", role="decode", draining=True), decodes[1]]
    assert pairing(every.links(), prefills + draining)["p0"] == "d1"
    assert d.choose_decode(req(), "p0", prefills + draining, pairs.links(), 0.0).instance_id is None
