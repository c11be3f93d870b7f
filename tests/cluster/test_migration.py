"""Migration off a draining instance, the controller's part (`cluster.migration`, pure): which
requests move (streamed, would outlive the deadline, somewhere to go), where, and that the
draining instance's leased KV is released exactly once whatever happens meanwhile."""

from __future__ import annotations

from hyperflexis.cluster.controller import Controller
from hyperflexis.cluster.controller_events import (
    Abort,
    DrainDue,
    FirstToken,
    HandOff,
    InstanceDown,
    InstanceUp,
    Migrate,
    MovedOut,
    MoveOut,
    PrefillDone,
    Redispatch,
    Release,
    RequestAborted,
    RequestArrived,
    RequestEnded,
    Resume,
    Route,
    TransferEnded,
)
from tests.cluster.helpers import req
from tests.cluster.test_controller import PD, Cluster, make


def _on_m0(ctl: Controller, *request_ids: str) -> None:
    for request_id in request_ids:
        (route,) = ctl.handle(0.0, RequestArrived(req(request_id)))
        assert isinstance(route, Route)
        ctl.requests[request_id].instance_id = "m0"  # the test decides where it runs
        ctl.handle(0.1, FirstToken(request_id))


def _collocated() -> tuple[Controller, Cluster]:
    ctl, cluster = make([("m0", "mixed"), ("m1", "mixed"), ("m2", "mixed")])
    cluster.free["m2"] = 2000  # the most free KV: the target
    cluster.draining.add("m0")
    return ctl, cluster


def test_only_streamed_requests_that_would_outlive_the_deadline_move() -> None:
    ctl, _ = _collocated()
    _on_m0(ctl, "long", "short")
    ctl.handle(0.0, RequestArrived(req("queued")))  # no first token: not moved
    ctl.requests["queued"].instance_id = "m0"
    due = DrainDue("m0", 5.0, {"long": 9.0, "short": 1.0, "queued": 9.0})
    assert ctl.handle(1.0, due) == [MoveOut("long", "m0")]
    assert ctl.requests["long"].stage == "migrating"
    assert ctl.handle(1.5, due) == []  # asked once
    moved = MovedOut("long", "m0", moved=True, num_kv_tokens=1010)
    assert ctl.handle(1.6, moved) == [Migrate("long", "m0", "m2", with_kv=True)]
    placement = ctl.requests["long"]
    assert (placement.instance_id, placement.stage, placement.kv_source) == (
        "m2",
        "receiving",
        "m0",
    )
    assert ctl.handle(1.7, TransferEnded("long", ok=True)) == [Release("long", "m0")]
    assert ctl.handle(2.0, RequestEnded("long")) == []  # released once
    assert ctl.num_migrations == 1


def test_nothing_moves_without_another_instance_to_take_it() -> None:
    ctl, cluster = _collocated()
    _on_m0(ctl, "a")
    cluster.draining.update(("m1", "m2"))
    assert ctl.handle(1.0, DrainDue("m0", 0.0, {"a": 9.0})) == []


def test_a_request_that_was_not_decoding_there_goes_on_as_it_was() -> None:
    ctl, _ = _collocated()
    _on_m0(ctl, "a")
    ctl.handle(1.0, DrainDue("m0", 0.0, {"a": 9.0}))
    assert ctl.handle(1.1, MovedOut("a", "m0", moved=False)) == []
    assert ctl.requests["a"].stage == "running" and ctl.requests["a"].instance_id == "m0"


def test_an_abort_while_moving_frees_the_lease_once() -> None:
    ctl, _ = _collocated()
    _on_m0(ctl, "a", "b")
    ctl.handle(1.0, DrainDue("m0", 0.0, {"a": 9.0, "b": 9.0}))
    assert ctl.handle(1.1, RequestAborted("a")) == [Abort("a", "m0")]
    late = MovedOut("a", "m0", moved=True, num_kv_tokens=1010)
    assert ctl.handle(1.2, late) == [Release("a", "m0")]
    ctl.handle(1.3, MovedOut("b", "m0", moved=True, num_kv_tokens=1010))
    assert ctl.handle(1.4, RequestAborted("b")) == [Abort("b", "m2"), Release("b", "m0")]


def test_a_request_without_kv_recomputes_and_a_dead_target_resumes_it_elsewhere() -> None:
    ctl, _ = _collocated()
    _on_m0(ctl, "a")
    ctl.handle(1.0, DrainDue("m0", 0.0, {"a": 9.0}))
    moved = MovedOut("a", "m0", moved=True, num_kv_tokens=0)  # preempted: it held no KV
    assert ctl.handle(1.1, moved) == [Migrate("a", "m0", "m2", with_kv=False)]
    assert ctl.requests["a"].stage == "recomputing"
    assert ctl.handle(1.2, InstanceDown("m2")) == [Resume("a", "m2", "m1")]


def test_pd_decodes_move_to_another_decode_instance_and_release_there() -> None:
    ctl, cluster = make(PD)
    cluster.free["d1"] = 10  # d0 takes the hand-off
    ctl.handle(0.0, RequestArrived(req("a")))
    assert ctl.handle(0.1, PrefillDone("a", "p0")) == [HandOff("a", "p0", "d0")]
    assert ctl.handle(0.2, TransferEnded("a", ok=True)) == [Release("a", "p0")]
    cluster.draining.add("d0")
    assert ctl.handle(1.0, DrainDue("d0", 0.0, {"a": 9.0})) == [MoveOut("a", "d0")]
    moved = MovedOut("a", "d0", moved=True, num_kv_tokens=1005)
    assert ctl.handle(1.1, moved) == [Migrate("a", "d0", "d1", with_kv=True)]
    assert ctl.handle(1.2, TransferEnded("a", ok=False)) == [Release("a", "d0")]
    assert ctl.requests["a"].stage == "recomputing"  # a failed pull recomputes on d1


def test_a_decode_whose_prefill_instance_left_recomputes_on_any_decode_instance() -> None:
    ctl, cluster = make(PD)
    cluster.free["d1"] = 10  # d0 takes the hand-off
    ctl.handle(0.0, RequestArrived(req("a")))
    assert ctl.handle(0.1, PrefillDone("a", "p0")) == [HandOff("a", "p0", "d0")]
    ctl.handle(0.2, TransferEnded("a", ok=True))
    ctl.handle(0.3, InstanceDown("p0"))  # scaled in: no links from it any more
    assert ctl.handle(0.4, InstanceDown("d0")) == [HandOff("a", "p0", "d1", with_kv=False)]


def test_past_the_deadline_a_request_that_streamed_nothing_is_dispatched_again() -> None:
    ctl, cluster = make([("p0", "prefill"), ("d0", "decode")])
    assert ctl.handle(0.0, RequestArrived(req("a"))) == [Route("a", "p0", "least-loaded")]
    cluster.roles["p1"], cluster.free["p1"] = "prefill", 1000
    ctl.handle(0.5, InstanceUp("p1", "prefill"))
    cluster.draining.add("p0")
    assert ctl.handle(1.0, DrainDue("p0", 2.0, {})) == []  # the deadline is not past yet
    (abort, again) = ctl.handle(2.0, DrainDue("p0", 2.0, {}))
    assert abort == Abort("a", "p0")
    assert isinstance(again, Redispatch) and (again.from_id, again.instance_id) == ("p0", "p1")
    assert ctl.requests["a"].prefill_id == "p1"
    # The draining instance finished the prompt before the abort reached it: freed, not pulled.
    assert ctl.handle(2.1, PrefillDone("a", "p0")) == [Release("a", "p0")]
