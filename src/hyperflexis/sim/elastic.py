"""The elastic cluster simulator: `ClusterSimulator` driven by a scaler (DESIGN.md §6).

Every control interval the scaler sees the cluster (`ClusterView`) and returns decisions, which
are applied here with modelled times:

- **scale out**: a new instance starts; it serves after the decision's start-up time (weights
  from a live peer device-to-device, else from disk, plus initialisation). When it is ready it is
  first linked to its P/D partners in the `LinkTable`, and only then takes traffic.
- **scale in**: the instance drains (its snapshots say `draining`, so the dispatcher sends it
  nothing new; a decode instance leaves the link table at once so no hand-off can pick it) and
  its requests finish; then it shuts down (`stop_s`) and stops costing.
- **role switch**: the instance drains as above, then flips prefill <-> decode without reloading
  weights (`role_switch_s`), is linked in its new role, and takes traffic again.

A prefill instance keeps its links while it drains, so its own prefills still hand off. A
prefilled request whose prefill instance has no active linked decode instance (every one is
draining or still starting) waits, holding its KV, until one is linked; it is never dropped.
Cost is integrated over every instance's life, starting and draining included (`CostMeter`).
At the end every offered request must have exactly one record (conservation), or the run raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hyperflexis.bench.metrics import check_conservation
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.links import LinkPolicy, LinkTable
from hyperflexis.cluster.scaler import (
    INSTANCE_STATES,
    ClusterView,
    CostMeter,
    InstanceView,
    PoolLimits,
    Scaler,
    ScalingDecision,
    StartupModel,
)
from hyperflexis.cluster.scaler.decision import DrainTarget
from hyperflexis.cluster.scaler.tracker import flipped
from hyperflexis.cluster.snapshot import LoadSnapshot, take_snapshot
from hyperflexis.core.request import Request
from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import Role, SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager
from hyperflexis.scheduler.registry import make_scheduler
from hyperflexis.sim.deployment import Deployment, KVTransferModel
from hyperflexis.sim.elastic_events import (
    ControlTick,
    ElasticEventQueue,
    InstanceReady,
    InstanceStopped,
)
from hyperflexis.sim.elastic_result import (
    ClusterSample,
    ElasticResult,
    Handoff,
    Links,
    Transition,
)
from hyperflexis.sim.events import (
    Arrival,
    FastForwardEnd,
    StepEnd,
    StepStart,
    TransferDone,
)
from hyperflexis.sim.instance import SimInstance
from hyperflexis.sim.result import SimResult
from hyperflexis.sim.simulator import ClusterSimulator, ProgressCallback
from hyperflexis.workloads.spec import Workload

LifeState = Literal["starting", "active", "draining", "stopped"]


@dataclass(slots=True)
class _Life:
    """Where one instance is in its life; the scheduler it runs says its current role."""

    state: LifeState
    role: Role  # the role it serves, or will serve once starting (or switching) completes
    drain_target: DrainTarget | None = None  # while draining: stop, or flip roles
    drained: bool = False  # draining and its work is done: shutting down or switching
    num_incoming: int = 0  # KV transfers on their way to it (decode instances)


@dataclass(frozen=True, slots=True)
class ElasticTimes:
    """Modelled durations of the transitions a decision does not carry itself."""

    control_interval_s: float = 10.0  # how often the scaler decides
    role_switch_s: float = 1.0  # a drained instance's flip: re-plan its KV cache, no weights
    stop_s: float = 1.0  # a drained instance's shutdown (it still holds its accelerator)
    # With requests still unfinished this long after the last arrival, the run gives up (a
    # scaler that never provides a decode instance would otherwise tick forever).
    give_up_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.control_interval_s > 0:
            raise ValueError("invalid elastic field 'control_interval_s': must be > 0")
        for name in ("role_switch_s", "stop_s", "give_up_after_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"invalid elastic field {name!r}: must be >= 0")


class ElasticSimulator(ClusterSimulator):
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
    ) -> None:
        """As `ClusterSimulator`, plus the scaler, its pool bounds (the deployment's roles:
        `mixed`, or `prefill` and `decode`), the cost meter (price per instance-hour) and the
        link policy. The deployment is the initial cluster; its `links` are replaced by a
        `LinkTable` of `link_policy` over its instances."""
        super().__init__(
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
        )
        expected = {"prefill", "decode"} if deployment.is_disaggregated else {"mixed"}
        if set(pools) != expected:
            raise ValueError(
                f"invalid parameter 'pools': the deployment needs pools {sorted(expected)}, "
                f"got {sorted(pools)}"
            )
        self.scaler = scaler
        self.pools = dict(pools)
        self.cost_meter = cost_meter
        self.times = times or ElasticTimes()
        self._policy = policy
        self._scheduler_config = scheduler_config
        self._cost_model = cost_model
        self._num_kv_blocks = num_kv_blocks
        self._block_size = block_size
        self._fast_forward = fast_forward
        self._record_steps = record_steps
        context = scaler.context
        self._startup = StartupModel(context.hardware, context.model, context.init_s)
        ids = deployment.instances()
        self.link_table = LinkTable.build(
            [i for i, role in ids if role == "prefill"],
            [i for i, role in ids if role == "decode"],
            policy=link_policy,
            fanout=link_fanout,
        )
        self.links = self.link_table.links()
        self._lives = [_Life("active", inst.role) for inst in self.instances]  # type: ignore[arg-type]
        self._scaling_queue = ElasticEventQueue()  # typed for our events too
        self._queue = self._scaling_queue
        self._handlers.update(
            {
                InstanceReady: self._on_instance_ready,
                InstanceStopped: self._on_instance_stopped,
                ControlTick: self._on_control_tick,
            }
        )
        self._parked: list[tuple[SimInstance, Request]] = []
        self._num_parked = 0
        self._num_offered = 0
        self._num_arrived = 0
        self._last_arrival_s = 0.0
        self._carried_preemptions = 0  # of schedulers replaced by a role switch
        self._peak_instances = len(self.instances)
        self._samples: list[ClusterSample] = []
        self._transitions: list[Transition] = []
        self._decisions: list[ScalingDecision] = []
        self._link_log: list[tuple[float, Links]] = [(0.0, self.links)]
        self._handoffs: list[Handoff] = []
        self._assignments: list[tuple[float, str, str]] = []

    # -- the run ----------------------------------------------------------------------------

    def run(self, workload: Workload, on_progress: ProgressCallback | None = None) -> SimResult:
        """`run_elastic`'s records and counters, instance-seconds integrated."""
        return self.run_elastic(workload, on_progress).sim

    def run_elastic(
        self, workload: Workload, on_progress: ProgressCallback | None = None
    ) -> ElasticResult:
        """Run `workload` with the scaler deciding every control interval from time 0."""
        self._num_offered = len(workload)
        self._last_arrival_s = workload[-1].arrival_s if workload else 0.0
        self._update_cost(0.0)
        self._scaling_queue.push(0.0, ControlTick())
        sim = super().run(workload, on_progress)
        self._update_cost(sim.duration_s)
        sim.instance_seconds = self.cost_meter.instance_seconds()
        sim.num_instances = len(self.instances)
        sim.num_preemptions += self._carried_preemptions
        check_conservation([spec.request_id for spec in workload], sim.records)
        return ElasticResult(
            sim=sim,
            instance_seconds_by_state={
                state: self.cost_meter.instance_seconds(state) for state in INSTANCE_STATES
            },
            cost_usd=self.cost_meter.cost_usd(),
            samples=self._samples,
            transitions=self._transitions,
            decisions=self._decisions,
            link_log=self._link_log,
            handoffs=self._handoffs,
            assignments=self._assignments,
            num_parked=self._num_parked,
            peak_instances=self._peak_instances,
            extra={"scaler": self.scaler.name},
        )

    # -- the scaler -------------------------------------------------------------------------

    def _on_control_tick(self, event: ControlTick, now: float) -> None:
        decisions = self.scaler.decide(now, self.view(now))
        for decision in decisions:
            self._decisions.append(decision)
            self._apply(decision, now)
        self._sample(now)
        if self._work_remains(now):
            self._scaling_queue.push(now + self.times.control_interval_s, ControlTick())

    def view(self, now: float) -> ClusterView:
        """The cluster as the scaler sees it at `now`."""
        model = self.scaler.context.model.name
        views = []
        for index, (inst, life) in enumerate(zip(self.instances, self._lives, strict=True)):
            if life.state == "stopped":
                continue
            if life.state == "starting":
                views.append(InstanceView(inst.instance_id, life.role, "starting", model))
                continue
            snapshot = self._snapshot(index, now)
            views.append(
                InstanceView(
                    inst.instance_id, life.role, life.state, model, life.drain_target, snapshot
                )
            )
        return ClusterView(tuple(views), self.pools, self.link_table)

    def _apply(self, decision: ScalingDecision, now: float) -> None:
        if decision.kind == "scale_out":
            self._start_instance(decision, now)
            return
        index = self._index.get(decision.instance_id)
        if index is None or self._lives[index].state != "active":
            raise RuntimeError(
                f"scaler {self.scaler.name!r} decided {decision.kind} on "
                f"{decision.instance_id!r}, which is not an active instance"
            )
        life, inst = self._lives[index], self.instances[index]
        target: DrainTarget = "stop" if decision.kind == "scale_in" else "flip"
        if target == "flip" and inst.role == "mixed":
            raise RuntimeError(f"scaler {self.scaler.name!r} flipped mixed {inst.instance_id!r}")
        life.state, life.drain_target = "draining", target
        if inst.role == "decode":
            # Out of the table at once: no new hand-off can pick it, and its prefill partners
            # are relinked to the decode instances that stay.
            self.link_table.remove(inst.instance_id)
            self._relinked(now)
        self._transition(now, index, "drain", target)
        self._update_cost(now)
        self._check_drained(index, now)

    def _start_instance(self, decision: ScalingDecision, now: float) -> None:
        instance_id = decision.instance_id
        if instance_id in self._index:
            raise RuntimeError(f"scaler {self.scaler.name!r} reused instance id {instance_id!r}")
        if decision.role not in self.pools:
            raise RuntimeError(f"scaler {self.scaler.name!r} started a {decision.role} instance")
        startup_s = decision.startup_s
        source = decision.weight_source or "disk"
        if source == "peer" and not self._is_live(decision.peer_id):
            source, startup_s = "disk", None  # the peer left before the copy could start
        if startup_s is None:
            startup_s = self._startup.weight_load_s(source) + self._startup.init_s
        inst = self._new_instance(instance_id, decision.role)
        index = len(self.instances)
        self.instances.append(inst)
        self._index[instance_id] = index
        self._lives.append(_Life("starting", decision.role))
        self._scaling_queue.push(now + startup_s, InstanceReady(index))
        peer = f" {decision.peer_id}" if source == "peer" else ""
        self._transition(now, index, "start", f"weights from {source}{peer}, {startup_s:.2f} s")
        self._update_cost(now)

    # -- transitions ------------------------------------------------------------------------

    def _on_instance_ready(self, event: InstanceReady, now: float) -> None:
        index = event.instance_index
        inst, life = self.instances[index], self._lives[index]
        life.state = "active"
        # Linked before it takes traffic: it joins the dispatcher's candidates only below.
        if inst.role == "prefill":
            self.link_table.add_prefill(inst.instance_id)
            self._relinked(now)
        elif inst.role == "decode":
            self.link_table.add_decode(inst.instance_id)
            self._relinked(now)
        group = self._decode if inst.role == "decode" else self._entry
        group.append(index)
        group.sort()
        self._transition(now, index, "ready")
        self._update_cost(now)
        if inst.role == "decode" and self._parked:
            parked, self._parked = self._parked, []
            for prefill, request in parked:
                self._hand_off(prefill, request, now)
            for prefill, _ in parked:
                self._check_drained(self._index[prefill.instance_id], now)

    def _on_instance_stopped(self, event: InstanceStopped, now: float) -> None:
        index = event.instance_index
        self._lives[index].state = "stopped"
        self._leave_groups(index)
        self._transition(now, index, "stop")
        self._update_cost(now)

    def _check_drained(self, index: int, now: float) -> None:
        """Finish a drain once the instance holds no request and none is on its way to it."""
        life, inst = self._lives[index], self.instances[index]
        if life.state != "draining" or life.drained:
            return
        if inst.busy or inst.scheduler.has_unfinished() or life.num_incoming:
            return
        if any(prefill is inst for prefill, _ in self._parked):
            return  # it still holds the KV of a prefill waiting for a decode instance
        life.drained = True
        self._transition(now, index, "drained", life.drain_target or "")
        if inst.role == "prefill":
            self.link_table.remove(inst.instance_id)
            self._relinked(now)
        if life.drain_target == "stop":
            self._scaling_queue.push(now + self.times.stop_s, InstanceStopped(index))
            return
        # Role switch: the same weights serve the other phase; only the scheduler is new.
        new_role = flipped(inst.role)  # type: ignore[arg-type]
        self._leave_groups(index)
        switched = self._new_instance(inst.instance_id, new_role)
        switched.generation = inst.generation + 1  # stale end events of the old role stay stale
        switched.num_steps = inst.num_steps
        switched.num_fast_forward_steps = inst.num_fast_forward_steps
        self._carried_preemptions += inst.scheduler.num_preemptions
        self.instances[index] = switched
        life.state, life.role, life.drain_target, life.drained = "starting", new_role, None, False
        self._scaling_queue.push(now + self.times.role_switch_s, InstanceReady(index))
        self._transition(now, index, "flip")
        self._update_cost(now)

    # -- hooks into the simulator ------------------------------------------------------------

    def _on_arrival(self, event: Arrival, now: float) -> None:
        spec = event.spec
        self._num_arrived += 1
        slo = self._slos[spec.slo_class]
        self.scaler.observe_arrival(
            now,
            DispatchRequest(spec.request_id, spec.prompt_len, spec.output_len, slo, spec.arrival_s),
        )
        super()._on_arrival(event, now)
        route = self._routes.get(spec.request_id)
        if route:
            self._assignments.append((now, spec.request_id, route[0]))

    def _on_step_start(self, event: StepStart, now: float) -> None:
        super()._on_step_start(event, now)  # the scheduler may reject requests as it chooses
        self._check_drained(event.instance_index, now)

    def _on_step_end(self, event: StepEnd, now: float) -> None:
        super()._on_step_end(event, now)
        self._check_drained(event.instance_index, now)

    def _on_fast_forward_end(self, event: FastForwardEnd, now: float) -> None:
        super()._on_fast_forward_end(event, now)
        self._check_drained(event.instance_index, now)

    def _on_transfer_done(self, event: TransferDone, now: float) -> None:
        self._lives[event.instance_index].num_incoming -= 1
        super()._on_transfer_done(event, now)
        self._check_drained(event.instance_index, now)

    def _snapshot(self, index: int, now: float) -> LoadSnapshot:
        inst = self.instances[index]
        inst.sync(now)
        draining = self._lives[index].state == "draining"
        return take_snapshot(inst.instance_id, inst.scheduler, now, draining=draining)

    def _instance_index(self, instance_id: str, allowed: list[int]) -> int:
        index = super()._instance_index(instance_id, allowed)
        state = self._lives[index].state
        if state != "active":
            raise RuntimeError(
                f"dispatcher {self.dispatcher.name!r} chose {instance_id!r}, which is {state}"
            )
        return index

    def _hand_off(self, prefill: SimInstance, request: Request, now: float) -> None:
        linked = self.links.get(prefill.instance_id, frozenset())
        if not any(
            self.instances[i].instance_id in linked and self._lives[i].state == "active"
            for i in self._decode
        ):
            self._parked.append((prefill, request))
            self._num_parked += 1
            return
        route = self._routes[request.request_id]
        hops = len(route)
        super()._hand_off(prefill, request, now)
        if len(route) > hops:
            decode_id = route[-1]
            self._lives[self._index[decode_id]].num_incoming += 1
            self._handoffs.append(Handoff(now, request.request_id, prefill.instance_id, decode_id))

    def _record(self, request: Request) -> None:
        super()._record(request)
        record = self._records[-1]
        finish_s = record.finish_s if record.finish_s is not None else record.arrival_s
        self.scaler.observe_finish(finish_s, record)

    # -- helpers ----------------------------------------------------------------------------

    def _new_instance(self, instance_id: str, role: Role) -> SimInstance:
        config = dataclasses.replace(self._scheduler_config, role=role)
        kv = KVBlockManager(self._num_kv_blocks, self._block_size)
        scheduler = make_scheduler(self._policy, config, kv, self._cost_model)
        return SimInstance(
            instance_id,
            scheduler,
            self._cost_model,
            fast_forward=self._fast_forward,
            record_steps=self._record_steps,
        )

    def _leave_groups(self, index: int) -> None:
        for group in (self._entry, self._decode):
            if index in group:
                group.remove(index)

    def _is_live(self, instance_id: str | None) -> bool:
        index = self._index.get(instance_id) if instance_id is not None else None
        return index is not None and self._lives[index].state in ("active", "draining")

    def _relinked(self, now: float) -> None:
        """Publish the table's new links and check them: every linked decode instance is
        active, every linked prefill instance active or draining."""
        self.links = self.link_table.links()
        for prefill_id, decode_ids in self.links.items():
            if self._lives[self._index[prefill_id]].state not in ("active", "draining"):
                raise RuntimeError(f"link table holds {prefill_id!r}, which cannot serve")
            for decode_id in decode_ids:
                if self._lives[self._index[decode_id]].state != "active":
                    raise RuntimeError(f"link table holds {decode_id!r}, which is not active")
        self._link_log.append((now, self.links))

    def _transition(self, now: float, index: int, event: str, detail: str = "") -> None:
        life = self._lives[index]
        self._transitions.append(
            Transition(now, self.instances[index].instance_id, event, life.role, detail)
        )

    def _update_cost(self, now: float) -> None:
        counts = {"starting": 0, "active": 0, "draining": 0}
        for life in self._lives:
            if life.state != "stopped":
                counts[life.state] += 1
        self.cost_meter.update(now, counts)  # type: ignore[arg-type]
        self._peak_instances = max(self._peak_instances, sum(counts.values()))

    def _sample(self, now: float) -> None:
        by_role: dict[Role, int] = dict.fromkeys(self.pools, 0)
        by_state = {"starting": 0, "active": 0, "draining": 0}
        for life in self._lives:
            if life.state != "stopped":
                by_role[life.role] += 1
                by_state[life.state] += 1
        self._samples.append(ClusterSample(now, by_role, by_state))

    def _work_remains(self, now: float) -> bool:
        if self._num_arrived < self._num_offered:
            return True
        if now > self._last_arrival_s + self.times.give_up_after_s:
            return False
        if self._parked or any(life.num_incoming for life in self._lives):
            return True
        return any(
            inst.scheduler.has_unfinished()
            for inst, life in zip(self.instances, self._lives, strict=True)
            if life.state != "stopped"
        )
