"""A drain's migration in the elastic simulator (DESIGN.md §10.3): the controller's `DrainDue` ->
`MoveOut` -> `MovedOut` -> `Migrate` (`cluster.migration`) executed on simulated instances. A
decode that would outlive the drain's deadline moves, with its KV, to another instance, so the
drained instance stops before that decode ends; the request ends once, on the target, with all
its tokens and no recompute. A deadline that nothing outlives moves nothing (the old drain)."""

from __future__ import annotations

import math

import pytest

from hyperflexis.cluster.scaler import ClusterView, Scaler, ScalingDecision
from hyperflexis.cluster.scaler.actions import link_plan
from hyperflexis.sim import Deployment
from hyperflexis.sim.elastic import ElasticTimes
from hyperflexis.sim.elastic_result import ElasticResult
from hyperflexis.workloads import RequestSpec
from tests.sim.elastic_helpers import CONTROL_INTERVAL_S, TIMES, TRANSFER, elastic

DRAIN_AT_S = 2 * CONTROL_INTERVAL_S


class ScaleInAt(Scaler):
    """At `DRAIN_AT_S`, scale in `victim`; nothing else, ever."""

    name = "test-scale-in-at"
    victim = "mixed-1"

    def _decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        if now != DRAIN_AT_S:
            return []
        links = link_plan(view, self.tracker.planned_members(view))
        instance = next(i for i in view.instances if i.instance_id == self.victim)
        return [self.actions.scale_in(now, instance, links, "test")]


# Round robin: "long" on the second instance, decoding ~1500 tokens (~16 s at 10 ms + 1 ms per
# step), far past the 5 s deadline; "short" on the first.
LOAD = (
    RequestSpec("short", 0.0, 200, 50, "batch"),
    RequestSpec("long", 0.1, 200, 1500, "batch"),
)


def _run(
    deployment: Deployment, victim: str, deadline_s: float, load: tuple[RequestSpec, ...] = LOAD
) -> ElasticResult:
    times = ElasticTimes(
        TIMES.control_interval_s, TIMES.role_switch_s, TIMES.stop_s, drain_deadline_s=deadline_s
    )
    simulator = elastic(deployment, min_instances=1, times=times, record_steps=True)
    scaler = ScaleInAt(simulator.scaler.context)
    scaler.victim = victim
    simulator.scaler = scaler
    return simulator.run_elastic(load)


def _stop_s(result: ElasticResult, instance_id: str) -> float:
    (stop,) = [t for t in result.transitions if t.instance_id == instance_id and t.event == "stop"]
    return stop.time_s


def _check_every_request_ended_once_whole(
    result: ElasticResult, load: tuple[RequestSpec, ...]
) -> None:
    records = {r.request_id: r for r in result.sim.records}
    assert len(result.sim.records) == len(records) == len(load)
    for spec in load:
        record = records[spec.request_id]
        assert record.status == "completed", record
        assert record.num_output_tokens == spec.output_len
    assert all(n == 0 for n in result.sim.kv_blocks_in_use.values())


def test_a_decode_that_would_outlive_the_deadline_moves_and_its_instance_stops_early() -> None:
    result = _run(Deployment(num_mixed=2), "mixed-1", deadline_s=5.0)
    _check_every_request_ended_once_whole(result, LOAD)
    assert result.sim.routes["long"] == ("mixed-1", "mixed-0")
    assert result.sim.routes["short"] == ("mixed-0",)
    assert result.summary()["num_migrations"] == 1
    # It stopped decoding at the decision (between two steps), its KV moved in the modelled
    # transfer time, and then the drained instance shut down: long before the decode's end.
    long_record = next(r for r in result.sim.records if r.request_id == "long")
    assert long_record.finish_s is not None
    stop_s = _stop_s(result, "mixed-1")
    assert stop_s < DRAIN_AT_S + 0.1 + TIMES.stop_s
    assert stop_s < long_record.finish_s - 5.0
    # No recompute: the target's first chunk of "long" is one token, after all the others.
    steps = result.sim.step_logs["mixed-0"]
    chunks = [(start, pos, n) for start, batch in steps for rid, pos, n in batch if rid == "long"]
    start_s, pos, num_tokens = chunks[0]
    assert num_tokens == 1 and pos > 200
    moved_s = max(s for s, batch in result.sim.step_logs["mixed-1"] for rid, *_ in batch)
    assert start_s >= moved_s + TRANSFER.seconds(pos)
    assert sum(n for *_, n in chunks) + pos == 200 + 1500 - 1  # every later token, on mixed-0


@pytest.mark.parametrize("deadline_s", [60.0, math.inf])
def test_a_deadline_nothing_outlives_moves_nothing(deadline_s: float) -> None:
    result = _run(Deployment(num_mixed=2), "mixed-1", deadline_s)
    _check_every_request_ended_once_whole(result, LOAD)
    assert result.sim.routes["long"] == ("mixed-1",)
    assert result.summary()["num_migrations"] == 0
    long_record = next(r for r in result.sim.records if r.request_id == "long")
    assert long_record.finish_s is not None
    assert _stop_s(result, "mixed-1") == pytest.approx(long_record.finish_s + TIMES.stop_s)


def test_pd_a_draining_decode_instance_hands_its_decode_to_another() -> None:
    load = (
        RequestSpec("a", 0.0, 200, 1500, "batch"),
        RequestSpec("b", 0.1, 200, 1500, "batch"),
    )
    result = _run(Deployment(num_prefill=1, num_decode=2), "decode-1", 5.0, load)
    _check_every_request_ended_once_whole(result, load)
    moved = [
        rid for rid, path in result.sim.routes.items() if path[-2:] == ("decode-1", "decode-0")
    ]
    assert len(moved) == 1
    assert result.summary()["num_migrations"] == 1
    (record,) = [r for r in result.sim.records if r.request_id == moved[0]]
    assert record.finish_s is not None
    assert _stop_s(result, "decode-1") < record.finish_s - 5.0


def test_drain_deadline_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="drain_deadline_s"):
        ElasticTimes(drain_deadline_s=-1.0)
