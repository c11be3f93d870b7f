"""The cluster simulator: real schedulers and a real dispatcher on a virtual clock (DESIGN.md §1).

Each instance owns a `Scheduler` from the registry and steps as the engine loop does: choose a
batch, let the latency model say how long it takes, record its tokens at the step's end. New
requests go through the dispatcher, which sees every instance's `LoadSnapshot` at that instant.
In P/D deployments a request that finishes its prefill is handed, via `choose_decode`, to a linked
decode instance, and joins its queue once its KV has crossed the interconnect.

Simplifications: a prefill instance frees a request's KV when its prefill ends (the transfer is
not modelled as holding it; a drain's migration, `sim.migration`, holds its lease until the pull
ends), and the decode instance allocates KV when it admits the request. An
instance whose policy schedules nothing although it holds requests waits for its next request
instead of polling; requests still unfinished when the events run out (a policy that can never
schedule them) are recorded as failed and counted in `num_unfinished`.

A driver that changes the cluster while it runs (the elastic simulator) plugs in through one
narrow seam: `ClusterHooks` (`sim.hooks`), which the simulator calls at four points, and the
public methods below, which the driver calls to add, replace, drain and link instances and to
queue its own events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hyperflexis.bench.metrics import RequestRecord, delivered_after, record_from_request
from hyperflexis.cluster.controller import Controller
from hyperflexis.cluster.controller_events import (
    Effect,
    HandOff,
    InstanceDown,
    InstanceStarting,
    InstanceUp,
    Park,
    PrefillDone,
    Reject,
    RequestArrived,
    RequestEnded,
    Route,
    TransferEnded,
)
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.request import FinishReason, Request, RequestStatus
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO, SLOClasses
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.sim.deployment import Deployment, KVTransferModel, Links
from hyperflexis.sim.events import (
    Arrival,
    Event,
    EventQueue,
    FastForwardEnd,
    QueuedEvent,
    StepEnd,
    StepStart,
    TransferDone,
)
from hyperflexis.sim.hooks import ClusterHooks
from hyperflexis.sim.instance import InstanceFactory, SimInstance
from hyperflexis.sim.migration import SimMigrations
from hyperflexis.sim.result import SimResult
from hyperflexis.sim.step_noise import EXACT_STEPS, StepNoise
from hyperflexis.workloads.spec import RequestSpec, Workload

ProgressCallback = Callable[[int], None]  # called with the number of requests just offered


class ClusterSimulator:
    """Simulates one run of a workload on a deployment; build a new one for each run."""

    # Each record's `bench.metrics.delivered_after` (the response path; no decision sees it).
    response_latency_s: float = 0.0

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
        fast_forward: bool = True,
        record_steps: bool = False,
        reuse_snapshots: bool = True,
        hooks: ClusterHooks | None = None,
        step_noise: StepNoise = EXACT_STEPS,
    ) -> None:
        """`scheduler_config` is every instance's, `role` set per instance. `kv_transfer` (P/D
        hand-offs, a drain's migrations) is required for P/D. `hooks` is a driver's seam; it
        builds what it adds with `self.factory`. `step_noise`: what each step is charged."""
        if deployment.is_disaggregated and kv_transfer is None:
            raise ValueError("invalid parameter 'kv_transfer': a P/D deployment needs one")
        self.deployment = deployment
        self.dispatcher = dispatcher
        self.slo_classes = slo_classes
        self.kv_transfer = kv_transfer
        self.hooks = hooks or ClusterHooks()
        self.controller = Controller(dispatcher, self._snapshots, links=deployment.link_table())
        self.factory = InstanceFactory(
            policy,
            scheduler_config,
            cost_model,
            num_kv_blocks,
            block_size,
            fast_forward=fast_forward,
            record_steps=record_steps,
            reuse_snapshots=reuse_snapshots,
            step_noise=step_noise,
        )
        self.instances: list[SimInstance] = []
        self._index: dict[str, int] = {}
        self._queue = EventQueue()
        self._arriving: dict[str, Request] = {}  # built, not yet routed
        self._prefilled: dict[str, Request] = {}  # P/D: prefilled, not yet handed off
        self.migrations = SimMigrations(self)  # a drain's (driven by the elastic simulator)
        for instance_id, role in deployment.instances():
            self.join(self.add_instance(self.factory.build(instance_id, role)))
        self._records: list[RequestRecord] = []
        self._routes: dict[str, list[str]] = {}
        self._num_retired_preemptions = 0  # of schedulers replaced by `replace_instance`
        self._ran = False
        self._slos: dict[str, SLO] = {}  # resolved once per class
        self._handlers: dict[type[Any], Callable[[Any, float], None]] = {
            Arrival: self._on_arrival,
            StepStart: self._on_step_start,
            StepEnd: self._on_step_end,
            FastForwardEnd: self._on_fast_forward_end,
            TransferDone: self._on_transfer_done,
        }

    # -- the run ----------------------------------------------------------------------------

    def run(self, workload: Workload, on_progress: ProgressCallback | None = None) -> SimResult:
        """Offer every request of `workload` at its arrival time and run until all have ended."""
        if self._ran:
            raise RuntimeError("a ClusterSimulator runs once; build a new one")
        self._ran = True
        self._on_progress = on_progress
        for spec in workload:
            if spec.slo_class not in self._slos:  # an unknown class fails before the run
                self._slos[spec.slo_class] = self.slo_classes.resolve(spec.slo_class)
            self._queue.push(spec.arrival_s, Arrival(spec))
        now = 0.0
        queue, handlers = self._queue, self._handlers
        while queue:
            now, event = queue.pop()
            handlers[type(event)](event, now)
        num_unfinished = 0
        for inst in self.instances:
            for request in inst.abort_all(now):
                num_unfinished += 1
                self._record(request, now)
        for request_id in list(self.controller.parked):  # no decode instance ever took them
            request = self._prefilled.pop(request_id)
            request.finish_reason = FinishReason.ERROR
            self._record(request, now)
        last_arrival_s = workload[-1].arrival_s if workload else 0.0
        duration_s = max(now, last_arrival_s)
        if duration_s <= 0:
            duration_s = 1e-9  # everything happened at once: any positive span will do
        return self._result(duration_s, num_unfinished)

    def _result(self, duration_s: float, num_unfinished: int) -> SimResult:
        instances = self.instances
        return SimResult(
            records=self._records,
            duration_s=duration_s,
            instance_seconds=duration_s * len(instances),
            num_instances=len(instances),
            num_steps=sum(inst.num_steps for inst in instances),
            num_fast_forward_steps=sum(inst.num_fast_forward_steps for inst in instances),
            num_preemptions=sum(inst.scheduler.num_preemptions for inst in instances)
            + self._num_retired_preemptions,
            num_unfinished=num_unfinished,
            routes={rid: tuple(path) for rid, path in self._routes.items()},
            kv_blocks_in_use={
                inst.instance_id: inst.scheduler.kv.num_blocks - inst.scheduler.kv.num_free_blocks
                for inst in instances
            },
            step_logs={
                inst.instance_id: inst.step_log for inst in instances if inst.step_log is not None
            },
        )

    # -- the seam: what a driver calls (see `sim.hooks`) ------------------------------------

    def schedule(self, time_s: float, event: QueuedEvent) -> None:
        """Queue a driver's own event (its handler registered with `on`)."""
        self._queue.push(time_s, event)

    def on(self, event_type: type[Any], handler: Callable[[Any, float], None]) -> None:
        """Handle a driver's own event type: `handler(event, now)`."""
        if event_type in self._handlers:
            raise ValueError(f"invalid event type {event_type.__name__!r}: already handled")
        self._handlers[event_type] = handler

    def add_instance(self, instance: SimInstance) -> int:
        """Add an instance (not yet taking traffic: see `join`); returns its index."""
        if instance.instance_id in self._index:
            raise ValueError(f"invalid instance id {instance.instance_id!r}: already taken")
        self._index[instance.instance_id] = len(self.instances)
        self.instances.append(instance)
        self.controller.handle(0.0, InstanceStarting(instance.instance_id, instance.role))
        return len(self.instances) - 1

    def replace_instance(self, index: int, instance: SimInstance) -> None:
        """Put a new scheduler in an idle instance's place (a role flip): the counters carry."""
        old = self.instances[index]
        if instance.instance_id != old.instance_id or not old.idle:
            raise RuntimeError(f"{old.instance_id}: replaced while busy or by another instance")
        instance.succeed(old)
        self._num_retired_preemptions += old.scheduler.num_preemptions
        self.instances[index] = instance

    def join(self, index: int, now: float = 0.0) -> None:
        """The instance takes traffic for its role: new requests, or P/D hand-offs (a decode
        instance takes the parked ones at once)."""
        inst = self.instances[index]
        self.execute(self.controller.handle(now, InstanceUp(inst.instance_id, inst.role)), now)

    def leave(self, index: int, now: float = 0.0) -> None:
        """The instance takes no traffic at all any more (it holds none)."""
        down = InstanceDown(self.instances[index].instance_id)
        self.execute(self.controller.handle(now, down), now)

    @property
    def links(self) -> Links:
        """P/D: prefill id -> the decode ids it hands off to; a driver may publish new ones."""
        return self.controller.links

    @links.setter
    def links(self, links: Links) -> None:
        self.controller.set_links(links)

    def drain(self, index: int) -> None:
        """The instance finishes its work but takes nothing new (it stays a candidate that
        says `draining`; a dispatcher that picks it anyway is an error)."""
        self.instances[index].draining = True

    def index_of(self, instance_id: str | None) -> int | None:
        return self._index.get(instance_id) if instance_id is not None else None

    def snapshot(self, index: int, now: float) -> LoadSnapshot:
        return self.instances[index].snapshot(now)

    def _snapshots(self, instance_ids: Sequence[str], now: float) -> list[LoadSnapshot]:
        index = self._index
        return [self.instances[index[i]].snapshot(now) for i in instance_ids]

    def execute(self, effects: list[Effect], now: float) -> None:
        """Carry out the controller's effects on the simulated instances."""
        for effect in effects:
            if isinstance(effect, Route):
                index = self._index[effect.instance_id]
                request = self._arriving.pop(effect.request_id)
                self._routes[request.request_id] = [effect.instance_id]
                self.add_request(index, request, now)
            elif isinstance(effect, Reject):
                request = self._arriving.pop(effect.request_id)
                request.finish(FinishReason.REJECTED, now)
                self._record(request, now)
            elif isinstance(effect, HandOff):
                self._hand_off(effect, now)
            elif not isinstance(effect, Park) and not self.migrations.execute(effect, now):
                raise RuntimeError(f"the simulator cannot carry out {effect!r}")  # (parked: waits)

    def _hand_off(self, effect: HandOff, now: float) -> None:
        """P/D: send a prefilled request's KV to the decode instance the controller chose."""
        request = self._prefilled.pop(effect.request_id)
        index = self._index[effect.decode_id]
        self._routes[request.request_id].append(effect.decode_id)
        assert self.kv_transfer is not None  # checked in __init__ for P/D
        # The same object continues on the decode instance: its prompt's KV "arrived" and its
        # first token is already out.
        request.status = RequestStatus.WAITING
        request.finish_reason = None
        request.finish_s = None
        self.instances[index].num_incoming += 1
        arrive_s = now + self.kv_transfer.seconds(request.num_prompt_tokens)
        self._queue.push(arrive_s, TransferDone(index, request))
        self.hooks.handed_off(request.request_id, effect.prefill_id, effect.decode_id, now)

    @property
    def routes(self) -> Mapping[str, list[str]]:
        """Request id -> the instances it went through so far, in the order it was routed."""
        return self._routes

    # -- event handlers ---------------------------------------------------------------------

    def _on_arrival(self, event: Arrival, now: float) -> None:
        request = self._make_request(event.spec)
        dispatch_request = DispatchRequest(
            request.request_id, request.num_prompt_tokens, request.sampling_params.max_tokens,
            request.slo, request.arrival_s,
        )  # fmt: skip
        self.hooks.request_arrived(dispatch_request, now)
        self._arriving[request.request_id] = request
        self.execute(self.controller.handle(now, RequestArrived(dispatch_request)), now)
        if self._on_progress is not None:
            self._on_progress(1)

    def _on_step_start(self, event: StepStart, now: float) -> None:
        index = event.instance_index
        self.migrations.between_steps(index, now)
        self._start_step(index, now)
        self.hooks.instance_changed(index, now)

    def _start_step(self, index: int, now: float) -> None:
        inst = self.instances[index]
        inst.start_pending = False
        if inst.busy:
            return
        end_s, rejected = inst.start(now)
        for request in rejected:
            self._record(request, now)
        if end_s is None:
            return
        if inst.window is not None:
            self._queue.push(end_s, FastForwardEnd(index, inst.generation))
        else:
            self._queue.push(end_s, StepEnd(index, inst.generation))

    def _on_step_end(self, event: StepEnd, now: float) -> None:
        index = event.instance_index
        inst = self.instances[index]
        if event.generation == inst.generation:
            for request in inst.finish_step(now):
                if request.finish_reason is not FinishReason.PREFILLED:
                    self._record(request, now)
                else:
                    self._prefilled[request.request_id] = request
                    done = PrefillDone(request.request_id, inst.instance_id)
                    self.execute(self.controller.handle(now, done), now)
            self.wake(index, now)
        self.hooks.instance_changed(index, now)

    def _on_fast_forward_end(self, event: FastForwardEnd, now: float) -> None:
        index = event.instance_index
        inst = self.instances[index]
        if event.generation == inst.generation:  # else the window was cut short: a newer
            inst.finish_window(now)  # end event stands for it
            self.wake(index, now)
        self.hooks.instance_changed(index, now)

    def _on_transfer_done(self, event: TransferDone, now: float) -> None:
        index = event.instance_index
        ended = TransferEnded(event.request.request_id, ok=True)
        self.execute(self.controller.handle(now, ended), now)
        self.instances[index].num_incoming -= 1
        self.add_request(index, event.request, now)
        self.hooks.instance_changed(index, now)

    # -- helpers ----------------------------------------------------------------------------

    def add_request(self, index: int, request: Request, now: float) -> None:
        """Queue `request` on the instance (cutting a fast-forward window short)."""
        inst = self.instances[index]
        new_end_s = inst.add_request(request, now)
        if new_end_s is not None:
            self._queue.push(new_end_s, FastForwardEnd(index, inst.generation))
        elif not inst.busy:
            self.wake(index, now)

    def wake(self, index: int, now: float) -> None:
        """Have the instance pick its next step at `now` (after all else at `now`)."""
        inst = self.instances[index]
        if not inst.start_pending:
            inst.start_pending = True
            self._queue.push(now, StepStart(index))

    def _make_request(self, spec: RequestSpec) -> Request:
        return Request(
            request_id=spec.request_id,
            prompt_token_ids=[0] * spec.prompt_len,
            sampling_params=SamplingParams(
                max_tokens=spec.output_len, temperature=0.0, ignore_eos=True
            ),
            slo=self._slos[spec.slo_class],
            arrival_s=spec.arrival_s,
        )

    def _record(self, request: Request, now: float) -> None:
        self.execute(self.controller.handle(now, RequestEnded(request.request_id)), now)
        record = delivered_after(record_from_request(request), self.response_latency_s)
        self._records.append(record)
        self.hooks.request_ended(record)


__all__ = ["ClusterSimulator", "Event", "Links", "ProgressCallback"]
