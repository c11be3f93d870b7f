"""The cluster controller: routing, the leased P/D hand-off in every stage, parking, aborts,
lease expiry and instance loss, as effects (pure: snapshots are hand-built)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from hyperflexis.cluster import (
    DispatchDecision,
    Dispatcher,
    DispatchRequest,
    LinkTable,
    LoadSnapshot,
    make_dispatcher,
)
from hyperflexis.cluster.controller import Controller
from hyperflexis.cluster.controller_events import (
    Abort,
    Fail,
    FirstToken,
    HandOff,
    InstanceDown,
    InstanceStarting,
    InstanceUp,
    LeaseExpired,
    Park,
    PrefillDone,
    Redispatch,
    Reject,
    Release,
    RequestAborted,
    RequestArrived,
    RequestEnded,
    Resume,
    Route,
    TransferEnded,
)
from hyperflexis.scheduler.config import Role
from tests.cluster.helpers import CONFIG, LinearCost, req, snap


class Cluster:
    """Snapshots by id, editable between events."""

    def __init__(self) -> None:
        self.free: dict[str, int] = {}
        self.roles: dict[str, Role] = {}
        self.draining: set[str] = set()

    def snapshots(self, ids: Sequence[str], now: float) -> list[LoadSnapshot]:
        return [
            snap(i, role=self.roles[i], num_free_blocks=self.free[i], draining=i in self.draining)
            for i in ids
        ]


def make(
    instances: list[tuple[str, Role]],
    policy: str = "least-loaded",
    table: LinkTable | None = None,
) -> tuple[Controller, Cluster]:
    cluster = Cluster()
    ctl = Controller(
        make_dispatcher(policy, LinearCost(), CONFIG),
        cluster.snapshots,
        link_table=table if table is not None else LinkTable("all"),
    )
    for instance_id, role in instances:
        cluster.roles[instance_id] = role
        cluster.free[instance_id] = 1000
        assert ctl.handle(0.0, InstanceUp(instance_id, role)) == []
    return ctl, cluster


PD: list[tuple[str, Role]] = [("p0", "prefill"), ("d0", "decode"), ("d1", "decode")]


def test_hand_off_to_the_linked_decode_with_most_free_kv_then_release_once() -> None:
    ctl, cluster = make(PD)
    cluster.free["d1"] = 2000
    assert ctl.handle(0.0, RequestArrived(req("a"))) == [Route("a", "p0", "least-loaded")]
    assert ctl.requests["a"].stage == "prefilling"
    assert ctl.handle(0.1, PrefillDone("a", "p0")) == [HandOff("a", "p0", "d1")]
    assert ctl.requests["a"].stage == "receiving"
    assert ctl.handle(0.2, TransferEnded("a", ok=True)) == [Release("a", "p0")]
    assert ctl.requests["a"].stage == "decoding"
    assert ctl.handle(0.3, TransferEnded("a", ok=True)) == []  # a duplicate changes nothing
    assert ctl.handle(0.9, RequestEnded("a")) == []
    assert ctl.requests == {}
    assert ctl.num_handoffs == 1 and ctl.num_recomputes == 0


def test_failed_transfer_recomputes_on_d_and_still_releases_p() -> None:
    ctl, _ = make(PD)
    ctl.handle(0.0, RequestArrived(req("a")))
    ctl.handle(0.1, PrefillDone("a", "p0"))
    assert ctl.handle(0.2, TransferEnded("a", ok=False)) == [Release("a", "p0")]
    assert ctl.requests["a"].stage == "recomputing"
    assert (ctl.num_transfer_failures, ctl.num_recomputes) == (1, 1)


def test_collocated_requests_route_and_end_without_hand_off() -> None:
    ctl, _ = make([("m0", "mixed"), ("m1", "mixed")])
    (route,) = ctl.handle(0.0, RequestArrived(req("a")))
    assert isinstance(route, Route) and ctl.requests["a"].stage == "running"
    assert ctl.handle(0.5, RequestEnded("a")) == []
    assert ctl.requests == {}


def test_no_instance_rejects() -> None:
    ctl, _ = make([("d0", "decode")])
    (effect,) = ctl.handle(0.0, RequestArrived(req("a")))
    assert isinstance(effect, Reject) and "a" not in ctl.requests


def test_parked_until_a_decode_instance_comes_up_in_parking_order() -> None:
    ctl, cluster = make([("p0", "prefill"), ("d0", "decode")])
    cluster.draining.add("d0")  # up, but it takes nothing new
    for rid in ("a", "b"):
        ctl.handle(0.0, RequestArrived(req(rid)))
        assert ctl.handle(0.1, PrefillDone(rid, "p0")) == [Park(rid, "p0")]
    assert ctl.parked == ["a", "b"] and ctl.parked_on("p0") and ctl.num_parked == 2
    assert ctl.handle(0.15, LeaseExpired("b")) == []  # b's KV is gone: D must recompute it
    cluster.roles["d1"], cluster.free["d1"] = "decode", 1000
    assert ctl.handle(0.2, InstanceUp("d1", "decode")) == [
        HandOff("a", "p0", "d1"),
        HandOff("b", "p0", "d1", with_kv=False),
    ]
    assert ctl.parked == [] and not ctl.parked_on("p0")
    assert ctl.requests["b"].stage == "recomputing" and ctl.num_recomputes == 1
    assert ctl.handle(0.3, TransferEnded("b", ok=True)) == []  # nothing leased to release


def test_abort_in_each_stage_frees_both_sides() -> None:
    ctl, _ = make(PD)
    for rid in "abcd":
        ctl.handle(0.0, RequestArrived(req(rid)))
    assert ctl.handle(0.1, RequestAborted("a")) == [Abort("a", "p0")]  # prefilling
    (handoff,) = ctl.handle(0.1, PrefillDone("b", "p0"))
    assert isinstance(handoff, HandOff)
    # Receiving: stop D's pull and free P's lease.
    assert ctl.handle(0.2, RequestAborted("b")) == [
        Abort("b", handoff.decode_id),
        Release("b", "p0"),
    ]
    (handoff,) = ctl.handle(0.1, PrefillDone("c", "p0"))
    ctl.handle(0.2, TransferEnded("c", ok=True))
    assert ctl.handle(0.3, RequestAborted("c")) == [Abort("c", handoff.decode_id)]  # decoding
    assert ctl.handle(0.4, RequestAborted("c")) == []  # twice: nothing more
    ctl.handle(0.5, RequestAborted("d"))
    # A prefill that lands after its abort is released at once.
    assert ctl.handle(0.6, PrefillDone("d", "p0")) == [Release("d", "p0")]
    assert ctl.requests == {}


def test_abort_while_parked_releases_p() -> None:
    ctl, _ = make([("p0", "prefill")])
    ctl.handle(0.0, RequestArrived(req("a")))
    ctl.handle(0.1, PrefillDone("a", "p0"))
    assert ctl.handle(0.2, RequestAborted("a")) == [Release("a", "p0")]
    assert ctl.parked == []


def test_lease_expired_during_the_pull_leaves_nothing_to_release() -> None:
    ctl, _ = make(PD)
    ctl.handle(0.0, RequestArrived(req("a")))
    ctl.handle(0.1, PrefillDone("a", "p0"))
    ctl.handle(30.1, LeaseExpired("a"))
    assert ctl.handle(30.2, TransferEnded("a", ok=False)) == []


def test_p_dying_before_the_first_token_redispatches() -> None:
    ctl, cluster = make([("p0", "prefill"), ("p1", "prefill"), ("d0", "decode")])
    cluster.free["p0"] = 5000  # least-loaded ties go by free KV
    ctl.handle(0.0, RequestArrived(req("a")))
    first = ctl.requests["a"].instance_id
    other = "p1" if first == "p0" else "p0"
    (effect,) = ctl.handle(0.1, InstanceDown(first))
    assert effect == Redispatch("a", first, other, effect.reason)
    assert ctl.requests["a"].instance_id == other
    assert first not in ctl.links and other in ctl.links  # its links went with it
    (effect,) = ctl.handle(0.2, InstanceDown(other))
    assert isinstance(effect, Redispatch) and effect.instance_id is None
    assert ctl.requests == {}


def test_instance_loss_after_the_first_token() -> None:
    ctl, _ = make([("m0", "mixed"), ("p0", "prefill"), ("d0", "decode")])
    ctl.handle(0.0, RequestArrived(req("a")))
    mixed_or_p = ctl.requests["a"].instance_id
    ctl.handle(0.1, FirstToken("a"))
    (effect,) = ctl.handle(0.2, InstanceDown(mixed_or_p))
    # No other mixed instance to resume it on: it fails; from P it recomputes on D.
    assert isinstance(effect, Fail if mixed_or_p == "m0" else HandOff)
    # D dies while receiving a P/D request: the other D takes it, pulling the KV P still holds;
    # with no D left it parks (P keeps its lease) until a decode instance comes up.
    ctl2, _ = make(PD)
    ctl2.handle(0.0, RequestArrived(req("b")))
    (handoff,) = ctl2.handle(0.1, PrefillDone("b", "p0"))
    assert isinstance(handoff, HandOff)
    (moved,) = ctl2.handle(0.2, InstanceDown(handoff.decode_id))
    assert isinstance(moved, HandOff) and moved.decode_id != handoff.decode_id and moved.with_kv
    (parked,) = ctl2.handle(0.3, InstanceDown(moved.decode_id))
    assert isinstance(parked, Park)
    (again,) = ctl2.handle(0.4, InstanceUp(handoff.decode_id, "decode"))  # replaced
    assert isinstance(again, HandOff) and again.decode_id == handoff.decode_id and again.with_kv
    # A mixed instance dies after the first token: another mixed one resumes the request.
    ctl4, _ = make([("m0", "mixed"), ("m1", "mixed")])
    ctl4.handle(0.0, RequestArrived(req("d")))
    first = ctl4.requests["d"].instance_id
    ctl4.handle(0.1, FirstToken("d"))
    (resume,) = ctl4.handle(0.2, InstanceDown(first))
    assert resume == Resume("d", first, "m1" if first == "m0" else "m0")
    assert ctl4.num_resumes == 1 and ctl4.requests["d"].instance_id == resume.instance_id
    # P dies after handing off: D's pull fails and it recomputes; there is nothing to release.
    ctl3, _ = make(PD)
    ctl3.handle(0.0, RequestArrived(req("c")))
    ctl3.handle(0.1, PrefillDone("c", "p0"))
    assert ctl3.handle(0.2, InstanceDown("p0")) == []
    assert ctl3.handle(0.3, TransferEnded("c", ok=False)) == []


def test_only_linked_decodes_take_a_hand_off() -> None:
    table = LinkTable("pairs")
    ctl, _ = make(
        [("d0", "decode"), ("d1", "decode"), ("p0", "prefill"), ("p1", "prefill")], table=table
    )
    links = ctl.links
    assert all(len(ds) == 1 for ds in links.values())
    for k, p in enumerate(("p0", "p1")):
        ctl.requests.clear()
        ctl.handle(0.0, RequestArrived(req(f"r{k}")))
        ctl.requests[f"r{k}"].instance_id = ctl.requests[f"r{k}"].prefill_id = p
        (handoff,) = ctl.handle(0.1, PrefillDone(f"r{k}", p))
        assert isinstance(handoff, HandOff) and handoff.decode_id in links[p]


class Careless(Dispatcher):
    """Picks the first snapshot it gets, draining or not, and a decode id it is told to."""

    name = "careless"
    decode_id = "d9"

    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        return DispatchDecision(snapshots[0].instance_id, "first")

    def choose_decode(
        self,
        request: DispatchRequest,
        prefill_instance_id: str,
        snapshots: Sequence[LoadSnapshot],
        links: Mapping[str, frozenset[str]],
        now: float,
    ) -> DispatchDecision:
        return DispatchDecision(self.decode_id, "told")


def test_a_dispatcher_choosing_what_it_may_not_is_an_error() -> None:
    cluster = Cluster()
    careless = Careless(LinearCost(), CONFIG)
    ctl = Controller(careless, cluster.snapshots, link_table=LinkTable("all"))
    for instance_id, role in [("p0", "prefill"), ("d0", "decode"), ("d1", "decode")]:
        cluster.roles[instance_id], cluster.free[instance_id] = role, 10
        ctl.handle(0.0, InstanceUp(instance_id, role))
    cluster.draining.add("p0")
    with pytest.raises(RuntimeError, match="which is draining"):
        ctl.handle(0.0, RequestArrived(req("a")))
    cluster.draining.clear()
    ctl.handle(0.0, RequestArrived(req("b")))
    with pytest.raises(RuntimeError, match="which is not linked"):
        ctl.handle(0.1, PrefillDone("b", "p0"))
    ctl.handle(0.2, InstanceDown("d1"))  # still linked in the caller's eyes, but down
    ctl.set_links({"p0": frozenset({"d0", "d1"})})
    careless.decode_id = "d1"
    with pytest.raises(RuntimeError, match="cannot take"):
        ctl.handle(0.3, PrefillDone("b", "p0"))


def test_instances_rank_in_the_order_they_started_not_came_up() -> None:
    cluster = Cluster()
    asked: list[list[str]] = []

    def snapshots(ids: Sequence[str], now: float) -> list[LoadSnapshot]:
        asked.append(list(ids))
        return cluster.snapshots(ids, now)

    ctl = Controller(make_dispatcher("least-loaded", LinearCost(), CONFIG), snapshots)
    for instance_id in ("m0", "m1"):
        cluster.roles[instance_id], cluster.free[instance_id] = "mixed", 10
        ctl.handle(0.0, InstanceStarting(instance_id, "mixed"))
    ctl.handle(1.0, InstanceUp("m1", "mixed"))
    ctl.handle(2.0, InstanceUp("m0", "mixed"))
    ctl.handle(3.0, RequestArrived(req("a")))
    assert asked == [["m0", "m1"]]


def test_a_parked_request_fails_at_lease_expiry_when_no_decode_instance_is_up() -> None:
    ctl, _ = make([("p0", "prefill"), ("d0", "decode")])
    ctl.handle(0.0, InstanceDown("d0"))
    ctl.handle(0.0, RequestArrived(req("a")))
    assert ctl.handle(0.1, PrefillDone("a", "p0")) == [Park("a", "p0")]
    (effect,) = ctl.handle(30.1, LeaseExpired("a"))
    assert isinstance(effect, Fail) and "lease" in effect.reason
    assert ctl.requests == {} and ctl.parked == []
