"""`HandoffDriver`: the server's driver of the cluster controller (DESIGN.md §10), on the wall
clock and real instance processes.

The serving core tells it what happens (a request dispatched, each output delta, each step
report's KV-ready prefills, finished pulls and expired leases, a client gone, an instance gone)
and it turns that into controller events and the controller's effects into commands: a
`ResumeRequest` to the decode instance the controller chose (with a `KVSource` on P's pool, or
none when the KV is gone and D must recompute), `ReleaseKV` to P once D's pull ended either way,
`AbortRequest` wherever the request runs, the request sent again when its instance died before
its first token. The client sees one stream: the core keeps each stream's queue, the driver only
moves where the stream's request runs (`RequestStream.instance_id`, through `moved`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from hyperflexis.backends.local import InstanceHandle, InstancePool
from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    KVReady,
    KVSource,
    MigratedOut,
    MigrateOut,
    OutputDelta,
    ReleaseKV,
    ResumeRequest,
    StepReport,
)
from hyperflexis.cluster import migration
from hyperflexis.cluster.controller import Controller
from hyperflexis.cluster.controller_events import (
    Abort,
    DrainDue,
    Effect,
    Event,
    Fail,
    FirstToken,
    HandOff,
    InstanceDown,
    InstanceStarting,
    InstanceUp,
    LeaseExpired,
    Migrate,
    MovedOut,
    MoveOut,
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
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.links import LinkPolicy, LinkTable
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.scheduler.config import Role
from hyperflexis.server.metrics import ServerMetrics

Moved = Callable[[str, str], None]  # (request id, the instance it runs on now)
Failed = Callable[[str, str], None]  # (request id, why): end its stream with an error


class ScalingObserver(Protocol):
    """What a scaler's control loop learns of the traffic (`server.elastic.LiveScaler`)."""

    def arrived(self, request: DispatchRequest, now: float) -> None: ...

    def finished(self, slo: SLO, delta: OutputDelta, now: float) -> None: ...

    def reported(self, instance_id: str, now: float) -> None: ...


@dataclass(slots=True)
class Progress:
    """What the driver keeps of a live request to send it again or resume it elsewhere."""

    prompt_token_ids: list[int]
    params: SamplingParams
    slo: SLO
    arrival_s: float  # server receipt, monotonic clock
    output_token_ids: list[int] = field(default_factory=list)  # the client has these
    num_text_chars: int = 0  # output text the client has
    ttft_s: float | None = None  # arrival to its first token at the server
    kv: KVReady | None = None  # P/D: P's report of the prompt's leased blocks
    moved: MigratedOut | None = None  # a migration: its draining instance's leased blocks


class HandoffDriver:
    """Runs the controller for one server; every method takes `now` from the core."""

    def __init__(
        self,
        pool: InstancePool,
        dispatcher: Dispatcher,
        metrics: ServerMetrics,
        moved: Moved,
        failed: Failed,
        link_policy: LinkPolicy = "all",
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self._moved, self._failed = moved, failed
        self.controller = Controller(dispatcher, self._snapshots, link_table=LinkTable(link_policy))
        self.progress: dict[str, Progress] = {}
        self.effects: list[Effect] = []  # every effect so far, in order (tests compare them)
        self.draining: set[str] = set()  # scaled in: shown to the dispatcher as draining
        self.observer: ScalingObserver | None = None  # serve --scaler: arrivals and finishes
        for handle in pool.handles.values():
            self._handle(0.0, InstanceStarting(handle.instance_id, role_of(handle)))
        for handle in pool.live():
            self._handle(0.0, InstanceUp(handle.instance_id, role_of(handle)))
        self._count_roles()

    # -- what the core reports --------------------------------------------------------------

    def route(
        self,
        request: DispatchRequest,
        prompt_token_ids: list[int],
        params: SamplingParams,
        now: float,
    ) -> tuple[str | None, str]:
        """Where a new request goes (None: turned away) and why; the core sends it there."""
        (effect,) = self._handle(now, RequestArrived(request))
        if not isinstance(effect, Route):
            assert isinstance(effect, Reject)
            return None, effect.reason
        self.progress[request.request_id] = Progress(
            prompt_token_ids, params, request.slo, request.arrival_s
        )
        if self.observer is not None:
            self.observer.arrived(request, now)
        return effect.instance_id, effect.reason

    def on_delta(self, delta: OutputDelta, now: float) -> None:
        """An output delta the client gets (the core already dropped aborted requests')."""
        progress = self.progress.get(delta.request_id)
        if progress is None:
            return
        if delta.token_ids and not progress.output_token_ids:
            progress.ttft_s = now - progress.arrival_s
            self._handle(now, FirstToken(delta.request_id))
        progress.output_token_ids.extend(delta.token_ids)
        progress.num_text_chars += len(delta.text)
        if delta.finished:
            del self.progress[delta.request_id]
            if self.observer is not None:
                self.observer.finished(progress.slo, delta, now)
            self._execute(now, self._handle(now, RequestEnded(delta.request_id)))

    def on_report(self, handle: InstanceHandle, report: StepReport, now: float) -> None:
        """A step report's P/D part, after its deltas went to the streams."""
        for ready in report.kv_ready:
            progress = self.progress.get(ready.request_id)
            if progress is not None:
                progress.kv = ready
            done = PrefillDone(ready.request_id, handle.instance_id)
            self._execute(now, self._handle(now, done))
        for handoff in report.handoffs:
            self.metrics.on_transfer(handoff.transfer_s, handoff.num_bytes, handoff.ok)
            ended = TransferEnded(handoff.request_id, handoff.ok)
            self._execute(now, self._handle(now, ended))
        for request_id in report.leases_expired:
            self._execute(now, self._handle(now, LeaseExpired(request_id)))
        for moved in report.migrated:
            progress = self.progress.get(moved.request_id)
            if progress is not None and moved.moved:
                progress.moved = moved
            num_kv_tokens = moved.num_tokens if moved.block_ids else 0
            out = MovedOut(moved.request_id, handle.instance_id, moved.moved, num_kv_tokens)
            self._execute(now, self._handle(now, out))
        if self.observer is not None:
            self.observer.reported(handle.instance_id, now)

    def drain_due(self, instance_id: str, deadline_s: float, now: float) -> None:
        """`instance_id` drains until `deadline_s`: the controller moves off it what would
        outlive that (`cluster.migration`), by each request's pace so far."""
        left = {
            request_id: seconds_left(progress, now)
            for request_id, placement in self.controller.requests.items()
            if placement.instance_id == instance_id
            and (progress := self.progress.get(request_id)) is not None
            and progress.output_token_ids
        }
        self._execute(now, self._handle(now, DrainDue(instance_id, deadline_s, left)))

    def abort(self, request_id: str, now: float) -> None:
        """The client went away: stop the request in every stage, free its KV on both sides."""
        self.progress.pop(request_id, None)
        self._execute(now, self._handle(now, RequestAborted(request_id)))

    def on_exit(self, handle: InstanceHandle, now: float) -> None:
        """An instance died: what it held without a first token is sent again. What still
        points at it afterwards (the core's streams) has failed."""
        self._execute(now, self._handle(now, InstanceDown(handle.instance_id)))
        for request_id in [r for r in self.progress if r not in self.controller.requests]:
            del self.progress[request_id]  # failed with it
        self._count_roles()

    def on_starting(self, handle: InstanceHandle) -> None:
        """A new instance (a scale-out) is loading: known, not up, so it takes no traffic."""
        self._handle(0.0, InstanceStarting(handle.instance_id, role_of(handle)))
        self._count_roles()

    def on_retired(self, handle: InstanceHandle, now: float) -> None:
        """A drained instance stopped (a scale-in): it holds nothing, it leaves."""
        self.draining.discard(handle.instance_id)
        self._execute(now, self._handle(now, InstanceDown(handle.instance_id)))
        self._count_roles()

    def on_flipping(self, handle: InstanceHandle, role: Role, now: float) -> None:
        """A drained instance switches to `role` in place: it takes no traffic (and has no
        links) until its `InstanceReady` in the new role (`on_ready`)."""
        self.draining.discard(handle.instance_id)
        self._execute(now, self._handle(now, InstanceDown(handle.instance_id)))
        self._handle(now, InstanceStarting(handle.instance_id, role))
        self._count_roles()

    def on_ready(self, handle: InstanceHandle, now: float) -> None:
        """An instance (a replacement) is ready: it takes traffic for its role again."""
        self._execute(now, self._handle(now, InstanceUp(handle.instance_id, role_of(handle))))
        self._count_roles()

    def describe(self, instance_id: str) -> dict[str, object]:
        """/debug/instances: the instance's role and its P/D links."""
        record = self.controller.instances.get(instance_id)
        links = self.controller.links
        if record is None or record.role == "mixed":
            linked: list[str] = []
        elif record.role == "prefill":
            linked = sorted(links.get(instance_id, frozenset()))
        else:
            linked = sorted(p for p, ds in links.items() if instance_id in ds)
        return {"role": None if record is None else record.role, "linked": linked}

    # -- effects ----------------------------------------------------------------------------

    def _handle(self, now: float, event: Event) -> list[Effect]:
        effects = self.controller.handle(now, event)
        self.effects.extend(effects)
        return effects

    def _execute(self, now: float, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, HandOff):
                self._hand_off(effect, now)
            elif isinstance(effect, Release):
                self._send(effect.prefill_id, ReleaseKV(effect.request_id))
            elif isinstance(effect, Abort):
                self._send(effect.instance_id, AbortRequest(effect.request_id))
            elif isinstance(effect, Redispatch) and effect.instance_id is not None:
                self._redispatch(effect.request_id, effect.instance_id)
            elif isinstance(effect, Resume):
                self._send_resume(effect.request_id, effect.instance_id, now, None)
            elif isinstance(effect, MoveOut):
                self._send(effect.instance_id, MigrateOut(effect.request_id))
            elif isinstance(effect, Migrate):
                self._migrate(effect, now)
            elif isinstance(effect, Fail):
                self.progress.pop(effect.request_id, None)
                self._failed(effect.request_id, effect.reason)
            # Park waits for a decode instance; a Redispatch to nowhere ends the request's
            # stream in the core's `on_exit` (it still points at the dead instance).

    def _hand_off(self, effect: HandOff, now: float) -> None:
        progress = self.progress[effect.request_id]
        ready = progress.kv
        kv = None
        if effect.with_kv and ready is not None:
            prefill = self.pool.get(effect.prefill_id)
            pool = prefill.ready.kv_pool if prefill.ready is not None else None
            if pool is not None:
                kv = KVSource(effect.prefill_id, pool, ready.block_ids, ready.num_tokens)
        if not effect.with_kv or kv is None:
            self.metrics.on_recompute()
        self._send_resume(effect.request_id, effect.decode_id, now, kv)

    def _migrate(self, effect: Migrate, now: float) -> None:
        """A request stopped on its draining instance continues on `to_id`, pulling the KV
        the draining one leased (recomputing when that cannot be)."""
        progress = self.progress[effect.request_id]
        moved, kv = progress.moved, None
        # Every token it made there reached the server before its answer (one pipe, in order);
        # if not, the KV does not match what the client has, and a recompute does.
        num_sent = len(progress.output_token_ids)
        if effect.with_kv and moved is not None and moved.num_output_tokens == num_sent:
            source = self.pool.handles.get(effect.from_id)
            pool = None if source is None or source.ready is None else source.ready.kv_pool
            if pool is not None:
                kv = KVSource(effect.from_id, pool, moved.block_ids, moved.num_tokens)
        if kv is None:
            self.metrics.on_recompute()
        self.metrics.on_migration()
        self._send_resume(effect.request_id, effect.to_id, now, kv)

    def _send_resume(
        self, request_id: str, instance_id: str, now: float, kv: KVSource | None
    ) -> None:
        """The one resume path: `instance_id` continues the request (pulling `kv`, or
        recomputing the prompt and the output the client has)."""
        progress = self.progress[request_id]
        ready = progress.kv
        resume = ResumeRequest(
            request_id,
            progress.prompt_token_ids,
            list(progress.output_token_ids),
            progress.params,
            progress.slo,
            age_s=now - progress.arrival_s,
            ttft_s=progress.ttft_s if ready is None else ready.ttft_s,
            num_text_chars_sent=progress.num_text_chars,
            kv=kv,
            queue_s=None if ready is None else ready.queue_s,
        )
        self._moved(request_id, instance_id)
        self._send(instance_id, resume)

    def _redispatch(self, request_id: str, instance_id: str) -> None:
        progress = self.progress[request_id]
        self._moved(request_id, instance_id)
        handle = self.pool.get(instance_id)
        handle.num_dispatched += 1
        handle.send(
            AddRequest(
                request_id, progress.prompt_token_ids, progress.params, progress.slo,
                progress.arrival_s,
            )
        )  # fmt: skip

    def _send(
        self, instance_id: str, command: ResumeRequest | ReleaseKV | AbortRequest | MigrateOut
    ) -> None:
        handle = self.pool.handles.get(instance_id)
        if handle is not None and handle.alive:
            handle.send(command)

    def _snapshots(self, instance_ids: Sequence[str], now: float) -> list[LoadSnapshot]:
        handles = self.pool.handles
        snapshots = [
            snapshot
            for i in instance_ids
            if i in handles and handles[i].alive and (snapshot := handles[i].snapshot) is not None
        ]
        if not self.draining:
            return snapshots
        return [
            replace(s, draining=True) if s.instance_id in self.draining else s for s in snapshots
        ]

    def _count_roles(self) -> None:
        counts: dict[str, int] = {"mixed": 0, "prefill": 0, "decode": 0}
        for record in self.controller.instances.values():
            if record.up:
                counts[record.role] += 1
        self.metrics.set_instances_by_role(counts)
        self.metrics.charge_instances(time.monotonic(), self.pool.handles.values())


def seconds_left(progress: Progress, now: float) -> float:
    """How long a streaming request still needs at its pace so far (`cluster.migration`'s
    estimate, as the simulator's)."""
    decoding_s = now - progress.arrival_s - (progress.ttft_s or 0.0)
    return migration.seconds_left(
        len(progress.output_token_ids), progress.params.max_tokens, decoding_s,
        progress.slo.tpot_s,
    )  # fmt: skip


def role_of(handle: InstanceHandle) -> Role:
    """The role the instance says it serves (its spec's until it is ready)."""
    return handle.role
