"""`InFlight`: what a dispatcher sent counts as load until a snapshot includes it."""

from __future__ import annotations

from hyperflexis.cluster import InFlight, InFlightRequest
from tests.cluster.helpers import snap


def sent(arrive_s: float) -> InFlightRequest:
    return InFlightRequest(arrive_s, arrive_s + 1.0, 1, 100, 0.1)


def test_kept_against_the_snapshot_it_was_sent_against() -> None:
    in_flight = InFlight()
    seen = snap("a", time_s=1.0)
    version = in_flight.add(seen, sent(1.0))
    assert in_flight.since(seen) == ([sent(1.0)], version)
    # Another instance is unaffected.
    assert in_flight.since(snap("b", time_s=1.0)) == ([], 0)


def test_dropped_once_a_snapshot_taken_after_it_arrived_comes() -> None:
    in_flight = InFlight()
    seen = snap("a", time_s=1.0)
    in_flight.add(seen, sent(1.0))
    in_flight.add(seen, sent(1.5))
    # Taken at the same instant as the first send but after it (the simulator's case: many
    # arrivals at one time, a snapshot per arrival): it includes the first one only.
    requests, version = in_flight.since(snap("a", time_s=1.0))
    assert requests == [sent(1.5)]
    assert in_flight.count(snap("a", time_s=1.2)) == 1
    assert in_flight.count(snap("a", time_s=1.5)) == 0
    assert in_flight.since(snap("a", time_s=2.0))[1] > version


def test_forget_drops_an_instance() -> None:
    in_flight = InFlight()
    seen = snap("a")
    in_flight.add(seen, sent(0.0))
    in_flight.forget("a")
    assert in_flight.count(seen) == 0
