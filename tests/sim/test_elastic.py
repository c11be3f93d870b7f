"""The elastic simulator: instances start, drain, flip roles and stop as the scaler decides, with
modelled times; no request is lost, draining instances take nothing new, P/D hand-offs only go
over links that exist at that moment, and runs are deterministic."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from hyperflexis.cluster import DispatchDecision, DispatchRequest, LoadSnapshot
from hyperflexis.cluster.dispatch_baselines import RoundRobinDispatcher
from hyperflexis.cluster.scaler import ClusterView, PoolLimits, Scaler, ScalingDecision
from hyperflexis.cluster.scaler.actions import link_plan
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import Deployment
from hyperflexis.sim.elastic_result import ElasticResult
from tests.cluster.test_links import links_per_prefill
from tests.sim.elastic_helpers import COST_MODEL, TIMES, elastic, phased_workload

# Low, a step up to about 8x, low again: scale-out, then scale-in.
STEP = [(3.0, 40.0, 300, 60), (25.0, 60.0, 300, 60), (3.0, 100.0, 300, 60)]
# Prompt-heavy, then decode-heavy at a higher rate: prefill instances should become decode ones
# (the decode demand has to rise while the prefill pool still has instances to give).
SHIFT = [(8.0, 60.0, 1000, 15), (12.0, 80.0, 100, 120), (2.0, 40.0, 100, 60)]
# Decode-heavy load rising while the prefill pool is at its minimum: decode instances must start.
DECODE_GROWTH = [(2.0, 20.0, 100, 150), (14.0, 60.0, 100, 150)]
PD = Deployment(num_prefill=1, num_decode=1)
MIXED = Deployment(num_mixed=1)


@pytest.fixture(scope="module")
def step_mixed() -> ElasticResult:
    return elastic(MIXED).run_elastic(phased_workload(STEP))


@pytest.fixture(scope="module")
def shift_pd() -> ElasticResult:
    return elastic(PD, dispatch="hyperflexis").run_elastic(phased_workload(SHIFT))


def _all_completed(result: ElasticResult, num_offered: int) -> None:
    sim = result.sim
    assert len(sim.records) == num_offered
    assert len({r.request_id for r in sim.records}) == num_offered
    assert all(r.status == "completed" for r in sim.records)
    assert sim.num_unfinished == 0
    assert all(n == 0 for n in sim.kv_blocks_in_use.values())


def _state_at(result: ElasticResult, instance_id: str, time_s: float) -> str:
    """The instance's state after its last transition at or before `time_s`."""
    state = "active"  # instances of the initial deployment start active
    for t in result.transitions:
        if t.instance_id != instance_id or t.time_s > time_s:
            continue
        state = {
            "start": "starting",
            "ready": "active",
            "drain": "draining",
            "drained": "draining",
            "flip": "starting",
            "stop": "stopped",
        }[t.event]
    return state


def test_load_step_scales_out_then_in(step_mixed: ElasticResult) -> None:
    _all_completed(step_mixed, len(phased_workload(STEP)))
    outs = [d.time_s for d in step_mixed.decisions if d.kind == "scale_out"]
    ins = [d.time_s for d in step_mixed.decisions if d.kind == "scale_in"]
    assert outs and min(outs) >= 40.0  # nothing before the step
    assert ins and min(ins) > min(outs)
    assert max(ins) >= 100.0  # shrinks after the step ends
    counts = [s.by_role["mixed"] for s in step_mixed.samples]
    assert max(counts) >= 4
    assert counts[-1] <= 2
    # Cheaper than holding the peak all along, and the step is served.
    peak_cost = max(counts) * step_mixed.sim.duration_s
    assert step_mixed.instance_seconds < 0.7 * peak_cost
    assert step_mixed.sim.summary()["attainment"] > 0.9


def test_scale_out_uses_the_decision_start_up_time(step_mixed: ElasticResult) -> None:
    ready = {t.instance_id: t.time_s for t in step_mixed.transitions if t.event == "ready"}
    for decision in step_mixed.decisions:
        if decision.kind == "scale_out":
            assert decision.weight_source == "peer"  # a live instance lends its weights
            assert decision.startup_s is not None
            assert ready[decision.instance_id] == pytest.approx(
                decision.time_s + decision.startup_s
            )
    # Each modelled start is reported to the scaler, which plans later ones with it: the same
    # figure to the bit, now labelled measured.
    outs = [d for d in step_mixed.decisions if d.kind == "scale_out"]
    assert len({d.startup_s for d in outs}) == 1
    first_ready_s = min(ready[d.instance_id] for d in outs)
    for decision in outs:
        measured = decision.time_s > first_ready_s
        assert ("(measured: " in decision.reason) == measured, decision.reason
    assert any(d.time_s > first_ready_s for d in outs)


def test_a_given_start_time_is_executed_and_learnt_by_the_scaler() -> None:
    # A live run's measured start-up (longer than the scaler's estimate) replayed: the scaler
    # plans with its own estimate until a start has been seen, then with the executed one.
    times = dataclasses.replace(TIMES, start_s=7.5)
    result = elastic(MIXED, times=times).run_elastic(phased_workload(STEP))
    ready = {t.instance_id: t.time_s for t in result.transitions if t.event == "ready"}
    outs = [d for d in result.decisions if d.kind == "scale_out"]
    assert outs
    first_ready_s = min(ready[d.instance_id] for d in outs)
    for decision in outs:
        assert decision.startup_s is not None
        if decision.time_s > first_ready_s:
            assert decision.startup_s == pytest.approx(7.5)  # learnt
        else:
            assert decision.startup_s < 7.5  # its estimate
        assert ready[decision.instance_id] == pytest.approx(decision.time_s + 7.5)


def test_drained_instances_stop_after_the_stop_time(step_mixed: ElasticResult) -> None:
    drained = {t.instance_id: t.time_s for t in step_mixed.transitions if t.event == "drained"}
    stopped = {t.instance_id: t.time_s for t in step_mixed.transitions if t.event == "stop"}
    assert stopped and set(stopped) <= set(drained)
    for instance_id, stop_s in stopped.items():
        assert stop_s == pytest.approx(drained[instance_id] + TIMES.stop_s)


def test_instance_seconds_integrate_every_state(step_mixed: ElasticResult) -> None:
    by_state = step_mixed.instance_seconds_by_state
    assert by_state["starting"] > 0 and by_state["draining"] > 0
    assert step_mixed.instance_seconds == pytest.approx(sum(by_state.values()))
    assert step_mixed.cost_usd == pytest.approx(step_mixed.instance_seconds / 3600 * 3.6)


def test_no_request_lost_across_scale_out_in_and_role_flips(shift_pd: ElasticResult) -> None:
    kinds = {d.kind for d in shift_pd.decisions}
    assert kinds == {"scale_out", "scale_in", "role_switch"}
    flips = [d for d in shift_pd.decisions if d.kind == "role_switch"]
    assert any(d.from_role == "prefill" and d.role == "decode" for d in flips)
    _all_completed(shift_pd, len(phased_workload(SHIFT)))
    # A flipped instance serves its new role after draining plus the switch time.
    for flip in (t for t in shift_pd.transitions if t.event == "flip"):
        ready = min(
            t.time_s
            for t in shift_pd.transitions
            if t.instance_id == flip.instance_id and t.event == "ready" and t.time_s > flip.time_s
        )
        assert ready == pytest.approx(flip.time_s + TIMES.role_switch_s)


@pytest.mark.parametrize("fixture", ["step_mixed", "shift_pd"])
def test_draining_instance_receives_no_new_request(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    result: ElasticResult = request.getfixturevalue(fixture)
    assert any(t.event == "drain" for t in result.transitions)
    for time_s, _, instance_id in result.assignments:
        assert _state_at(result, instance_id, time_s) == "active"
    for handoff in result.handoffs:
        assert _state_at(result, handoff.decode_id, handoff.time_s) == "active"


def test_handoffs_only_over_links_that_exist_and_links_stay_balanced(
    shift_pd: ElasticResult,
) -> None:
    assert len(shift_pd.link_log) > 3  # links changed as instances came, went and flipped
    for _, links in shift_pd.link_log:
        decode_ids = set().union(*links.values()) if links else set()
        degrees = [sum(d in ds for ds in links.values()) for d in decode_ids]
        assert not degrees or max(degrees) - min(degrees) <= 1
        if decode_ids:  # fan-out 2, or more where decodes outnumber 2 per prefill instance
            per_prefill = links_per_prefill(2, len(links), len(decode_ids))
            assert all(len(ds) == per_prefill for ds in links.values())
    assert shift_pd.handoffs
    for handoff in shift_pd.handoffs:
        assert handoff.decode_id in shift_pd.links_at(handoff.time_s)[handoff.prefill_id]


def test_new_instances_are_linked_before_they_take_traffic(shift_pd: ElasticResult) -> None:
    started = {t.instance_id for t in shift_pd.transitions if t.event == "start"}
    assert any(i.startswith("prefill") for i in started)
    # The decode pool grows too: by a start or by the cheaper role switch.
    assert any(t.role == "decode" and t.event in ("start", "flip") for t in shift_pd.transitions)
    for instance_id in started:
        ready_s = min(
            t.time_s
            for t in shift_pd.transitions
            if t.instance_id == instance_id and t.event == "ready"
        )
        if instance_id.startswith("prefill"):  # linked at once: decode instances exist
            assert shift_pd.links_at(ready_s)[instance_id]
        uses = [h for h in shift_pd.handoffs if instance_id in (h.decode_id, h.prefill_id)]
        assert all(h.time_s >= ready_s for h in uses)
        assert all(t >= ready_s for t, _, i in shift_pd.assignments if i == instance_id)


def test_started_decode_instances_are_linked_when_ready_and_used_only_after() -> None:
    result = elastic(PD, dispatch="hyperflexis").run_elastic(phased_workload(DECODE_GROWTH))
    started = [t for t in result.transitions if t.event == "start" and t.role == "decode"]
    assert started
    for start in started:
        decode_id = start.instance_id
        ready_s = min(
            t.time_s
            for t in result.transitions
            if t.instance_id == decode_id and t.event == "ready"
        )
        assert any(decode_id in ds for ds in result.links_at(ready_s).values())
        handoffs = [h for h in result.handoffs if h.decode_id == decode_id]
        assert handoffs and all(h.time_s >= ready_s for h in handoffs)


def test_same_seed_same_results() -> None:
    load = phased_workload(SHIFT[:2], seed=3)
    first = elastic(PD, dispatch="hyperflexis").run_elastic(load)
    second = elastic(PD, dispatch="hyperflexis").run_elastic(load)
    assert first.summary() == second.summary()
    assert first.decisions == second.decisions
    assert first.transitions == second.transitions
    assert first.sim.routes == second.sim.routes


class IgnoresDraining(RoundRobinDispatcher):
    """Round-robin over every prefill/mixed snapshot, draining or not."""

    name = "test-ignores-draining"

    def __init__(self) -> None:
        super().__init__(COST_MODEL, SchedulerConfig())
        self.count = 0

    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        self.count += 1
        candidates = sorted(s.instance_id for s in snapshots if s.role != "decode")
        return DispatchDecision(candidates[self.count % len(candidates)], "test")


def test_a_dispatcher_that_picks_a_draining_instance_is_caught() -> None:
    simulator = elastic(MIXED, dispatch=IgnoresDraining())
    with pytest.raises(RuntimeError, match="draining"):
        simulator.run_elastic(phased_workload(STEP))


def test_static_scaler_keeps_the_cluster() -> None:
    load = phased_workload(STEP[:1])
    result = elastic(Deployment(num_mixed=2), "static").run_elastic(load)
    assert result.decisions == []
    assert result.instance_seconds == pytest.approx(2 * result.sim.duration_s)
    series = result.time_series(10.0)
    assert set(series["instances"]) == {"mixed"}
    assert all(n == 2 for n in series["instances"]["mixed"] if n is not None)
    rates = series["arrival_rps"]
    last_s = result.sim.duration_s - 10.0 * (len(rates) - 1)
    assert sum(rates[:-1]) * 10.0 + rates[-1] * last_s == pytest.approx(len(load))


def test_pools_must_match_the_deployment() -> None:
    simulator = elastic(MIXED)
    with pytest.raises(ValueError, match="pools"):
        type(simulator)(
            PD,
            "hyperflexis",
            SchedulerConfig(role="prefill"),
            COST_MODEL,
            simulator.cluster.dispatcher,
            simulator.cluster.slo_classes,
            100,
            kv_transfer=simulator.cluster.kv_transfer,
            scaler=simulator.scaler,
            pools={"mixed": PoolLimits()},
            cost_meter=simulator.cost_meter,
        )


class FlipTheOnlyDecode(Scaler):
    """At 4 s: start a new decode instance and flip the only one to prefill, so for a start-up
    no decode instance is active and finished prefills must wait."""

    name = "test-flip-the-only-decode"

    def _decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        if now != 4.0:
            return []
        links = link_plan(view, self.tracker.planned_members(view))
        decode = next(i for i in view.instances if i.instance_id == "decode-0")
        taken = {i.instance_id for i in view.instances}
        return [
            self.actions.role_switch(now, decode, links, "test"),
            self.actions.scale_out(now, view, "decode", links, taken, "test"),
        ]


def test_prefills_wait_for_a_decode_instance_instead_of_failing() -> None:
    simulator = elastic(PD, min_instances=0)  # the only decode instance may flip
    simulator.scaler = FlipTheOnlyDecode(simulator.scaler.context)
    load = phased_workload([(20.0, 15.0, 300, 30)])
    result = simulator.run_elastic(load)
    assert result.num_parked > 0
    _all_completed(result, len(load))
    ready = [t for t in result.transitions if t.event == "ready"]
    assert {t.instance_id: t.role for t in ready} == {
        "decode-0": "prefill",
        "decode-scaled-1": "decode",
    }
    # Nothing was handed off while no decode instance was active.
    gap_end = min(t.time_s for t in ready if t.role == "decode")
    assert not [h for h in result.handoffs if 4.0 < h.time_s < gap_end]
    assert any(h.time_s == gap_end for h in result.handoffs)  # the parked ones, at once
