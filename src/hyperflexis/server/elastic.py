"""`serve --scaler`: the live server's control loop (DESIGN.md §6, §10.3), collocated or P/D.

Every control interval it builds a `ClusterView` from the instances' live snapshots, asks the
same scaler object `simulate --scaler` uses, checks each decision against the instances' lives
(`cluster.lifecycle_decisions`) and applies it through the lifecycle and the controller:

- **scale out**: a new instance process starts under the decision's id (`InstancePool.add`;
  weights from a live peer with `--peer-weights`, else from disk). It takes no traffic until its
  `InstanceReady` arrives (`on_ready`): only then is it active in the lifecycle and up in the
  controller. Its time from decision to serving goes to the scaler's start-up model
  (`Scaler.observe_startup`), so the next scale-out is planned with what starts take here.
- **scale in**: the instance drains: its snapshots say `draining`, so the dispatcher sends it
  nothing new. Its requests finish where they are, but those that would outlive the drain's
  deadline (`--drain-deadline-s` after the decision) move, KV and all, to another instance that
  decodes (`cluster.migration`; the stream goes on from there). Once it is idle (nothing open on
  it, every KV block free) it is stopped (`InstancePool.retire`) and leaves the controller.
- **role switch** (P/D): it drains the same way; once idle it is down in the controller and told
  to switch roles (`SwitchRole`: a new scheduler in the other role, same process, weights and KV
  pool); its `InstanceReady` in the new role links it and it takes traffic again. The flip's
  time, decision to serving, is in `events` and `/debug/instances`.

A new instance that exits while loading, or still loads after `--start-timeout-s`, is killed and
leaves the pool, the controller and the lifecycle (`abandon_start`, called by the supervisor,
which times every start): event `start_failed`. A flip is a start in the new role, timed the
same way from its `SwitchRole`: an instance that has not answered it within `--start-timeout-s`
(hung, though its heartbeat may go on) or that exits meanwhile is killed and leaves the same way
(`abandon_flip`): event `flip_failed`. It was drained, so it held nothing; the pool it left has
lost it and the pool it was joining never got it, and the scaler sees both as they are.

A pool never drops below its `--min-instances` (the lifecycle refuses such a drain); P/D has a
pool per role, each within the same bounds. Decisions may also come from `POST /debug/scale`
(behind the API key), applied the same way, so a test can script them. Every event is logged with
the decision's reason and kept in `events`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperflexis.backends.local import InstanceHandle
from hyperflexis.backends.messages import OutputDelta, SwitchRole
from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.cluster.lifecycle import Flip, Lifecycle
from hyperflexis.cluster.lifecycle_decisions import (
    DrainInstance,
    StartInstance,
    check_decision,
    cluster_view,
)
from hyperflexis.cluster.links import LinkPolicy, LinkTable
from hyperflexis.cluster.migration import DEFAULT_DRAIN_DEADLINE_S
from hyperflexis.cluster.scaler import PoolLimits, Scaler, ScalingDecision
from hyperflexis.cluster.scaler.decision import WeightSource
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.slo import SLO
from hyperflexis.scheduler.config import Role
from hyperflexis.server.core import ServingCore
from hyperflexis.server.scripted import Scripted, scripted_decision

logger = logging.getLogger("hyperflexis.server.elastic")


@dataclass(slots=True)
class _Drain:
    """A drain under way: when it was decided, and by when the instance should be empty."""

    decided_s: float
    deadline_s: float
    drained_s: float | None = None  # a flip: when it was drained and told to switch
    switch_hang_s: float = 0.0  # a flip's test fault (`SwitchRole.hang_s`)


@dataclass(frozen=True, slots=True)
class _Finished:
    """A finished request as the scaler reads it (`cluster.scaler.observe.FinishedRequest`)."""

    slo_class: str
    num_output_tokens: int
    attained: bool


class LiveScaler:
    """The control loop of one server: a `Lifecycle` over its instances and a scaler."""

    def __init__(
        self,
        core: ServingCore,
        scaler: Scaler,
        pools: Mapping[Role, PoolLimits],
        control_interval_s: float,
        *,
        drain_deadline_s: float = DEFAULT_DRAIN_DEADLINE_S,
        link_policy: LinkPolicy = "all",
    ) -> None:
        self.core, self.scaler, self.pools = core, scaler, dict(pools)
        self.control_interval_s = control_interval_s
        self.drain_deadline_s = drain_deadline_s
        roles = [(h.instance_id, h.role) for h in core.pool.handles.values()]
        table = LinkTable.build(
            [i for i, r in roles if r == "prefill"], [i for i, r in roles if r == "decode"],
            link_policy,
        )  # fmt: skip
        self.lifecycle = Lifecycle(
            roles,
            table,
            role_switch_s=0.0,
            stop_s=0.0,
            minimums={role: limits.min_instances for role, limits in pools.items()},
        )
        self._startup = scaler.startup  # the scaler's model: it learns each start's time
        self.events: list[dict[str, Any]] = []  # every scaling event, for /debug/scaling
        self.drains: dict[str, _Drain] = {}  # draining or flipping instances
        self.flip_s: dict[str, float] = {}  # each instance's latest flip, decision to serving
        self._check_soon = False  # a check of the drains is scheduled on the event loop
        # New instances still loading, and flipping instances not yet ready in their new role:
        # when each started or was told to switch (the supervisor times them).
        self.scale_out_starts: dict[str, float] = {}
        self.flip_starts: dict[str, float] = {}
        core.handoff.observer = self  # the scaler sees every arrival and finish

    def now(self) -> float:
        """The scaler's clock: the server's (monotonic), as requests' arrival times."""
        return time.monotonic()

    async def run(self) -> None:
        """Tick every control interval, until cancelled; a failed tick is logged, and the
        loop goes on."""
        while True:
            await asyncio.sleep(self.control_interval_s)
            try:
                self.tick(self.now())
            except Exception:
                logger.exception("scaling: the control tick failed")

    def arrived(self, request: DispatchRequest, now: float) -> None:
        self.scaler.observe_arrival(now, request)

    def finished(self, slo: SLO, delta: OutputDelta, now: float) -> None:
        record = _Finished(slo.class_name, delta.num_output_tokens, bool(delta.attained))
        self.scaler.observe_finish(now, record)

    def reported(self, instance_id: str, now: float) -> None:
        """A report came from `instance_id`: if it is draining it may be drained now, so the
        drains are checked as soon as the report is handled, not only every control interval
        (a flip's time would include the wait for the next tick)."""
        if instance_id in self.drains and not self._check_soon:
            self._check_soon = True
            asyncio.get_running_loop().call_soon(self._check_drains)

    def _check_drains(self) -> None:
        self._check_soon = False
        try:
            self._finish_drains(self.now())
        except Exception:
            logger.exception("scaling: checking the drains failed")

    def tick(self, now: float) -> None:
        """Stop what has drained, then ask the scaler and apply its decisions."""
        self._finish_drains(now)
        view = cluster_view(self.lifecycle, self.pools, self.scaler.context.model.name, self._snap)
        for decision in self.scaler.decide(now, view):
            self.apply(decision, now)

    def apply(
        self,
        decision: ScalingDecision,
        now: float,
        drain_deadline_s: float | None = None,
        switch_hang_s: float = 0.0,
    ) -> None:
        """Check one decision against the instances' lives and carry it out; an impossible
        one raises RuntimeError (the lifecycle's and the checker's words). A drain's deadline
        is `drain_deadline_s` (default: the server's) after `now`; `switch_hang_s`: a test's
        hung role switch (`Scripted`)."""
        action = check_decision(
            self.scaler.name, decision, self.lifecycle, self.pools, self._startup
        )
        if isinstance(action, StartInstance):
            self._start_instance(action, decision.reason, now)
        else:
            deadline_s = self.drain_deadline_s if drain_deadline_s is None else drain_deadline_s
            self._drain(action, decision.reason, now, now + deadline_s, switch_hang_s)

    def startup_predictions(self) -> dict[str, dict[str, Any]]:
        """The scaler's start-up prediction per weight source and its basis, for
        /debug/scaling: the spec's until a start from that source was measured."""
        predictions: dict[str, dict[str, Any]] = {}
        sources: tuple[WeightSource, ...] = ("disk", "peer")
        for source in sources:
            startup_s, basis = self._startup.startup_s(source)
            predictions[source] = {"startup_s": round(startup_s, 4), "basis": basis}
        return predictions

    def state_of(self, instance_id: str) -> str | None:
        """starting, active, draining, flipping (drained, switching its role) or stopped."""
        life = self.lifecycle.lives.get(instance_id)
        if life is None:
            return None
        drain = self.drains.get(instance_id)
        return "flipping" if drain is not None and drain.drained_s is not None else life.state

    # -- transitions ------------------------------------------------------------------------

    def _start_instance(self, action: StartInstance, reason: str, now: float) -> None:
        pool = self.core.pool
        base = pool.specs[0]
        spec = dataclasses.replace(
            base,
            instance_id=action.instance_id,
            scheduler_config=dataclasses.replace(base.scheduler_config, role=action.role),
            seed=base.seed + len(pool.specs),
        )
        handle = pool.add(spec)
        source = handle.spec.weight_source
        self.lifecycle.start(action.instance_id, action.role, now, f"weights from {source}")
        self.core.handoff.on_starting(handle)
        self.scale_out_starts[action.instance_id] = now
        self._event(now, action.instance_id, "scale_out", f"{reason}; weights from {source}")

    def abandon_start(self, handle: InstanceHandle, reason: str, now: float) -> None:
        """A new instance that will not start (it exited, or is still loading past the start
        timeout; `server.health.Supervisor`'s call): killed, out of the pool, the controller
        and the lifecycle. It never served; the scaler decides again."""
        self.scale_out_starts.pop(handle.instance_id, None)
        self._remove(handle, now)
        self._event(now, handle.instance_id, "start_failed", reason)

    def abandon_flip(self, handle: InstanceHandle, reason: str, now: float) -> None:
        """A flipping instance that will not serve in its new role (no answer to its
        `SwitchRole` within the start timeout, or it exited; the supervisor's call): killed,
        out of the pool, the controller and the lifecycle, as a failed start. It was drained:
        it held no request and no KV, so nothing is lost; the scaler decides again."""
        self.flip_starts.pop(handle.instance_id, None)
        self.drains.pop(handle.instance_id, None)
        self._remove(handle, now)
        self._event(now, handle.instance_id, "flip_failed", reason)

    def _remove(self, handle: InstanceHandle, now: float) -> None:
        """Kill an instance that is not serving and drop it from the pool, the controller,
        /metrics' gauges and the lifecycle."""
        instance_id = handle.instance_id
        pool = self.core.pool
        if pool.handles.get(instance_id) is handle:
            del pool.handles[instance_id]
            pool.retired.append(handle)  # reaped when the server stops
        pool.kill(handle)
        handle.process.join(0.5)
        self.core.handoff.on_retired(handle, now)
        self.core.metrics.remove_instance(instance_id)
        self.lifecycle.stopped(instance_id, now)

    def _drain(
        self,
        action: DrainInstance,
        reason: str,
        now: float,
        deadline_s: float,
        switch_hang_s: float = 0.0,
    ) -> None:
        self.lifecycle.drain(action.instance_id, action.target, now)
        self.core.handoff.draining.add(action.instance_id)  # the dispatcher skips it
        self.drains[action.instance_id] = _Drain(now, deadline_s, switch_hang_s=switch_hang_s)
        self._event(now, action.instance_id, "drain", f"to {action.target}: {reason}")
        self._finish_drains(now)

    def _flip(self, flip: Flip, now: float) -> None:
        """A drained instance switches roles in place: down in the controller (it holds
        nothing) and not dispatched to until its `InstanceReady` in the new role arrives,
        which the supervisor awaits as long as a start's (`flip_starts`)."""
        handle = self.core.pool.handles[flip.instance_id]
        config = dataclasses.replace(handle.spec.scheduler_config, role=flip.role)
        handle.spec = dataclasses.replace(handle.spec, scheduler_config=config)  # a restart too
        handle.alive = False
        self.core.handoff.on_flipping(handle, flip.role, now)
        drain = self.drains[flip.instance_id]
        handle.send(SwitchRole(flip.role, drain.switch_hang_s))
        self.flip_starts[flip.instance_id] = now
        drain.drained_s = now
        detail = f"drained {now - drain.decided_s:.3f} s after the decision; to {flip.role}"
        self._event(now, flip.instance_id, "flip", detail)

    def on_ready(self, handle: InstanceHandle) -> None:
        """A new instance loaded (the supervisor has brought it up in the controller): it is
        active from now on."""
        life = self.lifecycle.lives.get(handle.instance_id)
        if life is None or life.state != "starting":
            return  # a replacement of a failed instance: the supervisor's
        decided_s = self.scale_out_starts.pop(handle.instance_id, None)
        now = self.now()
        self.lifecycle.ready(handle.instance_id, now)
        drain = self.drains.pop(handle.instance_id, None)
        if drain is not None and drain.drained_s is not None:
            self.flip_starts.pop(handle.instance_id, None)
            flip_s = self.flip_s[handle.instance_id] = now - drain.decided_s
            self.core.metrics.on_role_flip(flip_s)
            detail = (
                f"serves as {handle.role} {flip_s:.3f} s after the decision (drain "
                f"{drain.drained_s - drain.decided_s:.3f} s, switch {now - drain.drained_s:.3f} s)"
            )
            self._event(now, handle.instance_id, "flipped", detail, flip_s=round(flip_s, 4))
            return
        start = "" if handle.ready is None else f" ({handle.ready.start_info()})"
        if decided_s is None:
            self._event(now, handle.instance_id, "ready", f"takes traffic{start}")
            return
        startup_s = now - decided_s
        self.scaler.observe_startup(_weight_source(handle.spec.weight_source), startup_s)
        detail = f"takes traffic {startup_s:.3f} s after the decision{start}"
        self._event(now, handle.instance_id, "ready", detail, startup_s=round(startup_s, 4))

    def _finish_drains(self, now: float) -> None:
        for instance_id, life in list(self.lifecycle.lives.items()):
            if life.state != "draining":
                continue
            self.core.handoff.drain_due(instance_id, self.drains[instance_id].deadline_s, now)
            after = self.lifecycle.finish_drain(instance_id, self._idle(instance_id), now)
            if isinstance(after, Flip):
                self._flip(after, now)
            if after is None or isinstance(after, Flip):
                continue
            del self.drains[instance_id]
            handle = self.core.pool.retire(instance_id)
            self.core.handoff.on_retired(handle, now)
            self.core.metrics.remove_instance(instance_id)
            self.lifecycle.stopped(instance_id, now)
            self._event(now, instance_id, "stop", "drained: nothing open, every KV block free")

    def _idle(self, instance_id: str) -> bool:
        """Nothing open on it (the server's streams, the controller's placements) and its
        latest snapshot shows no request and every KV block free."""
        if any(s.instance_id == instance_id for s in self.core.streams.values()):
            return False
        controller = self.core.handoff.controller
        if any(p.instance_id == instance_id for p in controller.requests.values()):
            return False
        snapshot = self.core.pool.handles[instance_id].snapshot
        return (
            snapshot is not None
            and snapshot.num_running == 0
            and snapshot.num_waiting == 0
            and snapshot.num_free_blocks == snapshot.num_blocks
        )

    def _snap(self, instance_id: str) -> LoadSnapshot:
        snapshot = self.core.pool.handles[instance_id].snapshot
        assert snapshot is not None  # every active or draining instance has reported
        if self.state_of(instance_id) == "draining":
            return dataclasses.replace(snapshot, draining=True)
        return snapshot

    def _event(self, now: float, instance_id: str, event: str, detail: str, **extra: float) -> None:
        row = {"time_s": round(now, 3), "instance_id": instance_id, "event": event}
        self.events.append({**row, "detail": detail, **extra})
        logger.warning("scaling: instance %s %s (%s)", instance_id, event, detail)

    def scripted(self, body: Any, now: float) -> Scripted:
        """`POST /debug/scale`'s body as a decision (`server.scripted`); malformed: a 400."""
        return scripted_decision(body, now, self.lifecycle, self.pools)


def _weight_source(source: str) -> WeightSource:
    """The scaler's name for an instance's weight source (`transfer.weights`): any copy from
    peers (`peer`, `peer-dist`) is `peer`; fallbacks to disk count in its time."""
    return "disk" if source == "disk" else "peer"
