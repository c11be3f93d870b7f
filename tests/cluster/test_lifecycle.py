"""The elastic cluster's lifecycle rules on their own, with no event queue
(`cluster.lifecycle`), and the fixed simulator's seam (`sim.hooks`) as a driver sees it."""

from __future__ import annotations

import pytest

from hyperflexis.bench.metrics import RequestRecord
from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.cluster.lifecycle import Flip, Lifecycle, Stop
from hyperflexis.cluster.links import LinkTable
from hyperflexis.scheduler.config import Role
from hyperflexis.sim import Deployment
from hyperflexis.sim.hooks import ClusterHooks
from tests.sim.helpers import simulator, workload


def _pd(published: list[dict[str, frozenset[str]]] | None = None) -> Lifecycle:
    ids: list[tuple[str, Role]] = [
        ("prefill-0", "prefill"),
        ("decode-0", "decode"),
        ("decode-1", "decode"),
    ]
    table = LinkTable.build(["prefill-0"], ["decode-0", "decode-1"], policy="all")
    on_links = None if published is None else (lambda links: published.append(dict(links)))
    return Lifecycle(ids, table, role_switch_s=1.0, stop_s=2.0, on_links=on_links)


def test_a_draining_decode_instance_leaves_the_links_at_once_and_stops_when_idle() -> None:
    published: list[dict[str, frozenset[str]]] = []
    life = _pd(published)
    assert published == [{"prefill-0": frozenset({"decode-0", "decode-1"})}]
    life.drain("decode-1", "stop", 5.0)
    assert life.links == {"prefill-0": frozenset({"decode-0"})}
    assert published[-1] == life.links
    assert life.counts() == {"starting": 0, "active": 2, "draining": 1}
    assert life.finish_drain("decode-1", idle=False, now=6.0) is None  # still working
    assert life.finish_drain("decode-1", idle=True, now=7.0) == Stop("decode-1", 9.0)
    assert life.finish_drain("decode-1", idle=True, now=8.0) is None  # drained once
    life.stopped("decode-1", 9.0)
    events = [(t.instance_id, t.event) for t in life.transitions]
    assert events == [
        ("decode-1", "drain"),
        ("decode-1", "drained"),
        ("decode-1", "stop"),
    ]
    assert not life.is_live("decode-1")


def test_a_prefill_instance_keeps_its_links_until_drained_then_flips() -> None:
    life = _pd()
    life.drain("prefill-0", "flip", 1.0)
    assert life.links == {"prefill-0": frozenset({"decode-0", "decode-1"})}  # it still hands off
    assert life.finish_drain("prefill-0", idle=True, now=2.0) == Flip("prefill-0", "decode", 3.0)
    assert life.links == {}
    assert life.lives["prefill-0"].state == "starting"
    life.ready("prefill-0", 3.0)  # linked in its new role before it takes traffic
    assert life.lives["prefill-0"].role == "decode"
    assert "prefill-0" in life.link_table.decode_ids


def test_a_prefill_instance_holding_a_parked_hand_off_is_not_drained() -> None:
    life = _pd()
    life.drain("decode-0", "stop", 0.0)
    life.drain("decode-1", "stop", 0.0)
    assert life.links == {"prefill-0": frozenset()}  # no active linked decode instance
    life.drain("prefill-0", "stop", 1.0)
    # Its driver says it is not idle while the controller holds a parked hand-off on it.
    assert life.finish_drain("prefill-0", idle=False, now=1.0) is None
    life.start("decode-2", "decode", 1.0, "weights from disk")
    life.ready("decode-2", 4.0)
    assert life.links == {"prefill-0": frozenset({"decode-2"})}
    assert life.finish_drain("prefill-0", idle=True, now=4.0) == Stop("prefill-0", 6.0)


def test_a_drain_never_takes_a_pool_below_its_minimum() -> None:
    ids: list[tuple[str, Role]] = [("prefill-0", "prefill"), ("decode-0", "decode")]
    table = LinkTable.build(["prefill-0"], ["decode-0"], policy="all")
    life = Lifecycle(
        ids, table, role_switch_s=1.0, stop_s=1.0, minimums={"prefill": 1, "decode": 1}
    )
    with pytest.raises(RuntimeError, match="below its minimum"):
        life.drain("decode-0", "stop", 1.0)
    with pytest.raises(RuntimeError, match="below its minimum"):
        life.drain("prefill-0", "flip", 1.0)
    life.start("decode-1", "decode", 2.0, "weights from disk")  # a starting one counts as planned
    assert life.planned("decode") == 2
    life.drain("decode-0", "stop", 3.0)
    assert life.counts() == {"starting": 1, "active": 1, "draining": 1}


def test_only_an_active_instance_drains_and_a_mixed_one_never_flips() -> None:
    life = Lifecycle([("mixed-0", "mixed")], LinkTable.build([], []), role_switch_s=1.0, stop_s=1.0)
    with pytest.raises(RuntimeError, match="cannot flip"):
        life.drain("mixed-0", "flip", 0.0)
    life.drain("mixed-0", "stop", 0.0)
    with pytest.raises(RuntimeError, match="draining"):
        life.drain("mixed-0", "stop", 1.0)


class _Counting(ClusterHooks):
    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.ended: list[str] = []
        self.num_prefilled = 0

    def request_arrived(self, request: DispatchRequest, now: float) -> None:
        assert now == request.arrival_s
        self.arrived.append(request.request_id)

    def request_ended(self, record: RequestRecord) -> None:
        self.ended.append(record.request_id)

    def handed_off(self, request_id: str, prefill_id: str, decode_id: str, now: float) -> None:
        assert (prefill_id, decode_id) == ("prefill-0", "decode-0")
        self.num_prefilled += 1


def test_the_seam_reports_every_request_once_and_leaves_the_run_unchanged() -> None:
    load = workload(num_requests=40)
    deployment = Deployment.disaggregated(1, 1)
    plain = simulator("hyperflexis", deployment).run(load)
    hooks = _Counting()
    seen = simulator("hyperflexis", deployment)
    seen.hooks = hooks
    result = seen.run(load)
    assert hooks.arrived == [spec.request_id for spec in load]
    assert sorted(hooks.ended) == sorted(hooks.arrived)
    assert hooks.num_prefilled == len(load)
    assert result.records == plain.records
