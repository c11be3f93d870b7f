"""The elastic cluster simulator (DESIGN.md §6): the fixed `ClusterSimulator`, a `Lifecycle` of
its instances, and a scaler deciding every control interval.

It is composed, not derived: the fixed simulator runs the instances and calls this one through
its seam (`sim.hooks.ClusterHooks`); the lifecycle (`cluster.lifecycle`) holds the states, links and
parked hand-offs and says what each change leads to; the scaler's side (`sim.elastic_control`)
builds the `ClusterView` and checks decisions. This module executes all that with modelled times:

- **scale out**: a new instance starts; it serves after the decision's start-up time (weights
  from a live peer device-to-device, else from disk, plus initialisation). When it is ready it is
  first linked to its P/D partners, and only then takes traffic; its modelled start-up is
  reported to the scaler (`Scaler.observe_startup`), as the live server reports measured ones.
- **scale in**: the instance drains (its snapshots say `draining`, so the dispatcher sends it
  nothing new) and its requests finish there, or, when their decode would outlive the drain's
  deadline (`drain_deadline_s` after the decision), migrate to another instance with their KV
  (the controller decides, `cluster.migration`; `sim.migration` executes); requests that
  streamed nothing by the deadline are dispatched again. Then it shuts down (`stop_s`) and stops
  costing.
- **role switch**: the instance drains as above, then flips prefill <-> decode without reloading
  weights (`role_switch_s`), is linked in its new role, and takes traffic again.

Cost is integrated over every instance's life, starting and draining included (`CostMeter`).
At the end every offered request must have exactly one record (conservation), or the run raises.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from hyperflexis.bench.metrics import RequestRecord, check_conservation
from hyperflexis.cluster.controller_events import DrainDue, FirstToken
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.lifecycle import Flip, Lifecycle, Stop
from hyperflexis.cluster.lifecycle_decisions import (
    DrainInstance,
    StartInstance,
    check_decision,
    cluster_view,
)
from hyperflexis.cluster.links import LinkPolicy, LinkTable
from hyperflexis.cluster.migration import seconds_left
from hyperflexis.cluster.scaler import (
    INSTANCE_STATES,
    ClusterView,
    CostMeter,
    PoolLimits,
    Scaler,
    ScalingDecision,
    StartupModel,
)
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import Role, SchedulerConfig
from hyperflexis.sim.deployment import Deployment, KVTransferModel
from hyperflexis.sim.elastic_control import ElasticTimes, cluster_sample
from hyperflexis.sim.elastic_events import ControlTick, InstanceReady, InstanceStopped
from hyperflexis.sim.elastic_result import ClusterSample, ElasticResult, Handoff, Links
from hyperflexis.sim.hooks import ClusterHooks
from hyperflexis.sim.instance import SimInstance
from hyperflexis.sim.result import SimResult
from hyperflexis.sim.simulator import ClusterSimulator, ProgressCallback
from hyperflexis.sim.step_noise import EXACT_STEPS, StepNoise
from hyperflexis.workloads.spec import Workload


@dataclass(slots=True)
class _Tally:
    """What a run counts and logs besides the lifecycle's transitions and links."""

    num_offered: int = 0
    num_arrived: int = 0
    last_arrival_s: float = 0.0
    peak_instances: int = 0  # most instances holding an accelerator at once
    samples: list[ClusterSample] = field(default_factory=list)  # one per control tick
    decisions: list[ScalingDecision] = field(default_factory=list)
    handoffs: list[Handoff] = field(default_factory=list)
    starting: dict[str, StartInstance] = field(default_factory=dict)  # scale-outs not ready yet


class ElasticSimulator(ClusterHooks):
    """A `ClusterSimulator` whose instances start, drain, flip roles and stop as `scaler`
    decides. Build a new one for each run."""

    def __init__(
        self,
        deployment: Deployment,
        policy: str,
        scheduler_config: SchedulerConfig,
        cost_model: StepCostModel,
        dispatcher: Dispatcher,
        slo_classes: SLOClasses,
        num_kv_blocks: int,
        block_size: int = 16,
        kv_transfer: KVTransferModel | None = None,
        *,
        scaler: Scaler,
        pools: Mapping[Role, PoolLimits],
        cost_meter: CostMeter,
        times: ElasticTimes | None = None,
        link_policy: LinkPolicy = "balanced",
        link_fanout: int = 2,
        fast_forward: bool = True,
        record_steps: bool = False,
        step_noise: StepNoise = EXACT_STEPS,
    ) -> None:
        """As `ClusterSimulator` (fresh snapshots for every reader), plus the scaler, its pool
        bounds (the deployment's roles), the cost meter (per instance-hour) and the link policy.
        The deployment is the initial cluster, linked by a `LinkTable` of `link_policy`."""
        self.cluster = ClusterSimulator(
            deployment,
            policy,
            scheduler_config,
            cost_model,
            dispatcher,
            slo_classes,
            num_kv_blocks,
            block_size,
            kv_transfer,
            fast_forward=fast_forward,
            record_steps=record_steps,
            reuse_snapshots=False,
            hooks=self,
            step_noise=step_noise,
        )
        _check_pools(deployment, pools)
        self.scaler, self.pools, self.cost_meter = scaler, dict(pools), cost_meter
        self.times = times or ElasticTimes()
        context = scaler.context
        self._startup = StartupModel(context.hardware, context.model, context.init_s)
        ids = deployment.instances()
        self.lifecycle = Lifecycle(
            ids,
            LinkTable.build(*_split_roles(ids), policy=link_policy, fanout=link_fanout),
            role_switch_s=self.times.role_switch_s,
            stop_s=self.times.stop_s,
            on_links=self._publish_links,
            minimums={role: limits.min_instances for role, limits in pools.items()},
        )
        self.cluster.on(InstanceReady, self._on_instance_ready)
        self.cluster.on(InstanceStopped, self._on_instance_stopped)
        self.cluster.on(ControlTick, self._on_control_tick)
        self._tally = _Tally(peak_instances=len(ids))
        self.drain_deadlines: dict[str, float] = {}  # instance id -> its latest drain's deadline

    # -- the run ----------------------------------------------------------------------------

    def run(self, workload: Workload, on_progress: ProgressCallback | None = None) -> SimResult:
        """`run_elastic`'s records and counters, instance-seconds integrated."""
        return self.run_elastic(workload, on_progress).sim

    def run_elastic(
        self, workload: Workload, on_progress: ProgressCallback | None = None
    ) -> ElasticResult:
        """Run `workload` with the scaler deciding every control interval from time 0."""
        self._tally.num_offered = len(workload)
        self._tally.last_arrival_s = workload[-1].arrival_s if workload else 0.0
        self._meter(0.0)
        self.cluster.schedule(0.0, ControlTick())
        sim = self.cluster.run(workload, on_progress)
        self._meter(sim.duration_s)
        sim.instance_seconds = self.cost_meter.instance_seconds()
        check_conservation([spec.request_id for spec in workload], sim.records)
        # A request's first route is taken on its arrival, and the routes are kept in that order.
        arrival_s = {spec.request_id: spec.arrival_s for spec in workload}
        assignments = [(arrival_s[rid], rid, path[0]) for rid, path in sim.routes.items()]
        lifecycle = self.lifecycle
        return ElasticResult(
            sim=sim,
            instance_seconds_by_state={
                state: self.cost_meter.instance_seconds(state) for state in INSTANCE_STATES
            },
            cost_usd=self.cost_meter.cost_usd(),
            samples=self._tally.samples,
            transitions=lifecycle.transitions,
            decisions=self._tally.decisions,
            link_log=lifecycle.link_log,
            handoffs=self._tally.handoffs,
            assignments=assignments,
            num_parked=self.cluster.controller.num_parked,
            peak_instances=self._tally.peak_instances,
            extra={
                "scaler": self.scaler.name,
                "num_migrations": self.cluster.controller.num_migrations,
            },
        )

    def view(self, now: float) -> ClusterView:
        """The cluster as the scaler sees it at `now`."""
        cluster = self.cluster

        def snapshot(instance_id: str) -> LoadSnapshot:
            index = cluster.index_of(instance_id)
            assert index is not None  # every life belongs to an instance
            return cluster.snapshot(index, now)

        return cluster_view(self.lifecycle, self.pools, self.scaler.context.model.name, snapshot)

    # -- the control loop -------------------------------------------------------------------

    def _on_control_tick(self, event: ControlTick, now: float) -> None:
        for instance_id, life in list(self.lifecycle.lives.items()):
            if life.state == "draining":  # as the server's tick: what is due moves, or stops
                self._finish_drain(self._index(instance_id), now)
        decisions = self.scaler.decide(now, self.view(now))
        for decision in decisions:
            self._tally.decisions.append(decision)
            action = check_decision(
                self.scaler.name, decision, self.lifecycle, self.pools, self._startup
            )
            if isinstance(action, StartInstance):
                self._start(action, now)
            else:
                self._drain(action, now)
        self._tally.samples.append(cluster_sample(now, self.lifecycle, self.pools))
        if self._work_remains(now):
            self.cluster.schedule(now + self.times.control_interval_s, ControlTick())

    def _work_remains(self, now: float) -> bool:
        if self._tally.num_arrived < self._tally.num_offered:
            return True
        if now > self._tally.last_arrival_s + self.times.give_up_after_s:
            return False
        instances = self.cluster.instances
        if self.cluster.controller.parked or any(inst.num_incoming for inst in instances):
            return True
        lives = self.lifecycle.lives
        return any(
            inst.scheduler.has_unfinished()
            for inst in instances
            if lives[inst.instance_id].state != "stopped"
        )

    def _meter(self, now: float) -> None:
        """Charge the instances' time so far; call whenever a state count changes."""
        counts = self.lifecycle.counts()
        self.cost_meter.update(now, counts)
        self._tally.peak_instances = max(self._tally.peak_instances, sum(counts.values()))

    # -- executing the lifecycle ------------------------------------------------------------

    def _start(self, action: StartInstance, now: float) -> None:
        cluster = self.cluster
        index = cluster.add_instance(cluster.factory.build(action.instance_id, action.role))
        start_s = action.startup_s if self.times.start_s is None else self.times.start_s
        cluster.schedule(now + start_s, InstanceReady(index))
        self.lifecycle.start(action.instance_id, action.role, now, action.detail)
        # What the scaler learns is the start executed, as the server reports measured ones.
        self._tally.starting[action.instance_id] = dataclasses.replace(action, startup_s=start_s)
        self._meter(now)

    def _drain(self, action: DrainInstance, now: float) -> None:
        index = self.cluster.index_of(action.instance_id)
        assert index is not None  # checked against the lifecycle
        self.lifecycle.drain(action.instance_id, action.target, now)
        self.cluster.drain(index)
        self.drain_deadlines[action.instance_id] = now + self.times.drain_deadline_s
        self._meter(now)
        self._finish_drain(index, now)

    def _finish_drain(self, index: int, now: float) -> None:
        inst = self.cluster.instances[index]
        if not inst.draining:
            return
        self._drain_due(inst, now)
        # Not idle: a prefill instance that holds a parked hand-off's KV, an instance with a
        # migration's KV leased or a request about to move out.
        idle = (
            inst.idle
            and not len(inst.scheduler.leases)
            and index not in self.cluster.migrations.pending
            and not self.cluster.controller.parked_on(inst.instance_id)
        )
        after = self.lifecycle.finish_drain(inst.instance_id, idle, now)
        if isinstance(after, Stop):
            self.cluster.schedule(after.stopped_s, InstanceStopped(index))
        elif isinstance(after, Flip):
            cluster = self.cluster
            cluster.leave(index, now)
            cluster.replace_instance(index, cluster.factory.build(inst.instance_id, after.role))
            cluster.schedule(after.ready_s, InstanceReady(index))
            self._meter(now)

    def _drain_due(self, inst: SimInstance, now: float) -> None:
        """As the server's driver at each report of a draining instance: the controller hears
        what each streaming request on it still needs at its pace so far (`DrainDue`), and moves
        what would outlive the deadline. First tokens reach the controller here (`FirstToken`),
        only where a drain needs them, as nothing else in the simulator reads them."""
        life = self.lifecycle.lives[inst.instance_id]
        deadline_s = self.drain_deadlines[inst.instance_id]
        if life.state != "draining" or life.drained or math.isinf(deadline_s):
            return
        controller = self.cluster.controller
        inst.sync(now)
        left: dict[str, float] = {}
        for request in inst.scheduler.requests.values():
            first_s = request.first_token_s
            if first_s is None:
                continue
            placement = controller.requests.get(request.request_id)
            if placement is not None and not placement.has_first_token:
                controller.handle(now, FirstToken(request.request_id))  # (no effects)
            left[request.request_id] = seconds_left(
                request.num_output_tokens, request.sampling_params.max_tokens, now - first_s,
                request.slo.tpot_s,
            )  # fmt: skip
        due = DrainDue(inst.instance_id, deadline_s, left)
        self.cluster.execute(controller.handle(now, due), now)

    def _on_instance_ready(self, event: InstanceReady, now: float) -> None:
        index = event.instance_index
        inst = self.cluster.instances[index]
        self.lifecycle.ready(inst.instance_id, now)  # linked before it takes traffic
        start = self._tally.starting.pop(inst.instance_id, None)
        if start is not None:  # a scale-out, not a flip: its modelled time, to the bit
            self.scaler.observe_startup(start.weight_source, start.startup_s)
        controller = self.cluster.controller
        holders = [controller.requests[r].prefill_id for r in controller.parked]
        self.cluster.join(index, now)  # a decode instance takes the parked hand-offs
        self._meter(now)
        if inst.role == "decode":
            for prefill_id in holders:
                assert prefill_id is not None
                self._finish_drain(self._index(prefill_id), now)

    def _on_instance_stopped(self, event: InstanceStopped, now: float) -> None:
        index = event.instance_index
        self.lifecycle.stopped(self.cluster.instances[index].instance_id, now)
        self.cluster.leave(index, now)
        self._meter(now)

    def _publish_links(self, links: Links) -> None:
        self.cluster.links = links  # hand-offs go over the links in force

    def _index(self, instance_id: str) -> int:
        index = self.cluster.index_of(instance_id)
        assert index is not None  # every life belongs to an instance
        return index

    # -- the fixed simulator's seam ---------------------------------------------------------

    def request_arrived(self, request: DispatchRequest, now: float) -> None:
        self._tally.num_arrived += 1
        self.scaler.observe_arrival(now, request)

    def request_ended(self, record: RequestRecord) -> None:
        finish_s = record.finish_s if record.finish_s is not None else record.arrival_s
        self.scaler.observe_finish(finish_s, record)

    def handed_off(self, request_id: str, prefill_id: str, decode_id: str, now: float) -> None:
        self._tally.handoffs.append(Handoff(now, request_id, prefill_id, decode_id))

    def instance_changed(self, index: int, now: float) -> None:
        self._finish_drain(index, now)


def _split_roles(ids: list[tuple[str, Role]]) -> tuple[list[str], list[str]]:
    """The prefill ids and the decode ids."""
    return [i for i, r in ids if r == "prefill"], [i for i, r in ids if r == "decode"]


def _check_pools(deployment: Deployment, pools: Mapping[Role, PoolLimits]) -> None:
    expected = {"prefill", "decode"} if deployment.is_disaggregated else {"mixed"}
    if set(pools) != expected:
        raise ValueError(
            f"invalid parameter 'pools': the deployment needs pools {sorted(expected)}, "
            f"got {sorted(pools)}"
        )


__all__ = ["ElasticSimulator", "ElasticTimes"]
