"""Failure detection and replacement of instance processes, and what /health says.

An instance fails when its report pipe closes (it exited or crashed: noticed at once, the event
loop reads the pipe) or when it has sent nothing, not even its heartbeat, for
`--instance-timeout-s` (frozen: SIGSTOP, a hung driver). A silent one is SIGKILLed and its pipe
dropped *before* its requests go elsewhere, so a frozen process that wakes cannot send duplicate
tokens. Then, in this order: the dispatcher stops seeing it, its requests are recovered
through the cluster controller (`ServingCore.on_exit`: those that streamed nothing are sent
again, the others resume elsewhere through `ResumeRequest`, what cannot go on ends with an
error), its gauges leave /metrics, and a new process starts from the same spec (weights
from disk) if the restart budget allows. Every fault and recovery is logged.

A replacement still loading after the start timeout is killed and restarted (within the budget);
a new instance (`serve --scaler`'s scale-out) that exits or is still loading then is killed and
leaves the pool, the lifecycle and the controller (`ScaleOuts.abandon_start`): it never served,
and the scaler decides again. A role flip is timed the same way from its `SwitchRole`: an instance
that has not answered within the start timeout (hung: its heartbeat thread may beat on while its
loop never switches, and a flipping instance is not dispatched to, so silence cannot tell) or
that exits meanwhile is killed, counted as a failure, and leaves the same way
(`ScaleOuts.abandon_flip`), not replaced: it was drained, so it held nothing.

/health, for a load balancer: 200 while the server can serve, with `status` "ok" (every instance
ready) or "degraded" (some missing: capacity is down or still coming up, requests are still
served, so it stays in rotation); 503 with `status` "down" when no instance serves or "draining"
after SIGTERM (take it out of rotation). `reason` says why it is not "ok": which instance is
loading (as a replacement or a new instance), switching roles, or failed. The body lists each
instance's state: ready, starting (loading or switching) or failed (out of restart budget).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from hyperflexis.backends.local import InstanceHandle
from hyperflexis.server.config import DEFAULT_INSTANCE_TIMEOUT_S
from hyperflexis.server.core import ServingCore

logger = logging.getLogger("hyperflexis.server.health")

DEFAULT_MAX_RESTARTS = 3  # per instance, within the window
DEFAULT_RESTART_WINDOW_S = 300.0
DEFAULT_START_TIMEOUT_S = 300.0  # as `ServerConfig.ready_timeout_s`: how long a load may take


class ScaleOuts(Protocol):
    """The control loop's new instances (`server.elastic.LiveScaler`), whose starts the
    supervisor times as it times replacements'."""

    scale_out_starts: dict[str, float]  # each new instance still loading: when it started
    flip_starts: dict[str, float]  # each instance switching roles: when it was told to

    def abandon_start(self, handle: InstanceHandle, reason: str, now: float) -> None:
        """Kill a new instance that will not start; it leaves the pool, lifecycle, controller."""

    def abandon_flip(self, handle: InstanceHandle, reason: str, now: float) -> None:
        """Kill a flipping instance that will not serve in its new role; it leaves the same way."""


@dataclass
class RestartBudget:
    """At most `max_restarts` restarts of one instance within `window_s`: a crash loop stops."""

    max_restarts: int = DEFAULT_MAX_RESTARTS
    window_s: float = DEFAULT_RESTART_WINDOW_S

    def __post_init__(self) -> None:
        self._restarts: dict[str, deque[float]] = {}

    def take(self, instance_id: str, now: float) -> bool:
        """True (and counted) when `instance_id` may be restarted at `now`."""
        times = self._restarts.setdefault(instance_id, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) >= self.max_restarts:
            return False
        times.append(now)
        return True


class Supervisor:
    """Watches the instances of a `ServingCore`'s pool; fails, recovers and replaces them."""

    def __init__(
        self,
        core: ServingCore,
        instance_timeout_s: float = DEFAULT_INSTANCE_TIMEOUT_S,
        budget: RestartBudget | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self.core = core
        self.pool = core.pool
        self.instance_timeout_s = instance_timeout_s
        self.budget = budget or RestartBudget()
        self.start_timeout_s = start_timeout_s  # a replacement not ready by then is restarted
        self.failed_at: dict[str, float] = {}  # when each instance now restarting failed
        self.starting: dict[str, float] = {}  # when each replacement still loading was started
        self.scaling: ScaleOuts | None = None  # `serve --scaler`'s loop: its new instances

    async def watch(self) -> None:
        """Check for silent instances a few times per timeout, until cancelled."""
        while True:
            await asyncio.sleep(self.instance_timeout_s / 4)
            self.check(time.monotonic())

    def check(self, now: float) -> list[str]:
        """Fail every live instance silent for longer than the timeout, restart every
        replacement still loading past the start timeout (it may beat while hung) and stop
        every new (scaled-out) one and every unanswered role flip; their ids."""
        silent = [h for h in self.pool.live() if now - h.last_heard_s > self.instance_timeout_s]
        for handle in silent:
            self.fail(handle, f"silent for {now - handle.last_heard_s:.1f} s", now)
        stuck = [i for i, t in self.starting.items() if now - t > self.start_timeout_s]
        for instance_id in stuck:
            del self.starting[instance_id]
            self.pool.kill(self.pool.handles[instance_id])  # it holds no request
            logger.warning(
                "instance %s: its replacement did not start within %.0f s",
                instance_id,
                self.start_timeout_s,
            )
            self._restart(instance_id, now)
        return [h.instance_id for h in silent] + stuck + self._stop_hung_scale_outs(now)

    def _stop_hung_scale_outs(self, now: float) -> list[str]:
        """A new instance still loading past the start timeout, or a flipping one that has not
        answered its `SwitchRole` by then, is killed and leaves (it holds nothing, so nothing
        is lost; the scaler decides again), not restarted."""
        if self.scaling is None:
            return []
        timeout_s = self.start_timeout_s
        starts = self.scaling.scale_out_starts
        hung = [i for i, t in starts.items() if now - t > timeout_s]
        for instance_id in hung:
            logger.warning(
                "instance %s: a new instance did not start within %.0f s: stopped",
                instance_id,
                timeout_s,
            )
            reason = f"not ready within {timeout_s:g} s"
            self.scaling.abandon_start(self.pool.handles[instance_id], reason, now)
        flips = [i for i, t in self.scaling.flip_starts.items() if now - t > timeout_s]
        for instance_id in flips:
            handle = self.pool.handles[instance_id]
            logger.warning(
                "instance %s: no answer to its role switch (to %s) within %.0f s: stopped",
                instance_id,
                handle.spec.scheduler_config.role,
                timeout_s,
            )
            self.core.metrics.on_instance_failed(instance_id, {})
            reason = f"no answer to its switch to {handle.spec.scheduler_config.role} within "
            self.scaling.abandon_flip(handle, f"{reason}{timeout_s:g} s", now)
        return hung + flips

    def on_exit(self, handle: InstanceHandle) -> None:
        """Its report pipe closed: it exited, crashed, or failed to start."""
        code = handle.process.exitcode
        self.fail(handle, "exited" if code is None else f"exited with code {code}")

    def fail(self, handle: InstanceHandle, reason: str, now: float | None = None) -> None:
        """Kill it, recover its requests, drop its gauges, restart it (`now`: the monotonic
        time, read when None)."""
        instance_id = handle.instance_id
        if self.pool.handles.get(instance_id) is not handle:
            return  # an old process of a replaced instance
        self.starting.pop(instance_id, None)
        was_ready = handle.ready is not None
        self.pool.kill(handle)  # before its requests move: it can never answer again
        held = [(s, s.has_first_token) for s in self.core.streams.values()]
        held = [(s, started) for s, started in held if s.instance_id == instance_id]
        self.core.on_exit(handle, reason)
        outcomes = {"redispatched": 0, "resumed": 0, "failed": 0}
        for stream, started in held:
            outcome = "failed" if stream.finished else "resumed" if started else "redispatched"
            outcomes[outcome] += 1
        metrics = self.core.metrics
        metrics.on_instance_failed(instance_id, outcomes)
        logger.warning(
            "instance %s failed (%s): %d requests dispatched again, %d resumed, %d ended with "
            "an error",
            instance_id,
            reason if was_ready else f"while starting: {reason}",
            outcomes["redispatched"],
            outcomes["resumed"],
            outcomes["failed"],
        )
        now = time.monotonic() if now is None else now
        if self.scaling is not None and instance_id in self.scaling.scale_out_starts:
            self.scaling.abandon_start(handle, f"failed while starting: {reason}", now)
            return  # a new instance that never served leaves; the scaler decides again
        if self.scaling is not None and instance_id in self.scaling.flip_starts:
            self.scaling.abandon_flip(handle, f"failed while switching roles: {reason}", now)
            return  # as a failed start: it held nothing, it leaves
        if self.core.draining:
            return  # the server is stopping: its requests are recovered, it is not replaced
        self._restart(instance_id, now)

    def _restart(self, instance_id: str, now: float) -> None:
        """A new process for a failed instance, if the restart budget allows."""
        if not self.budget.take(instance_id, now):
            logger.error(
                "instance %s is not restarted: %d restarts within %.0f s already",
                instance_id,
                self.budget.max_restarts,
                self.budget.window_s,
            )
            return
        self.failed_at.setdefault(instance_id, now)
        replacement = self.pool.replace(instance_id)
        self.starting[instance_id] = now
        self.core.metrics.on_instance_restarted(instance_id)
        logger.warning(
            "instance %s: starting a replacement (weights from %s)",
            instance_id,
            replacement.spec.weight_source,
        )

    def on_ready(self, handle: InstanceHandle) -> None:
        """A replacement loaded: it serves from now on."""
        self.starting.pop(handle.instance_id, None)
        self.core.handoff.on_ready(handle, time.monotonic())  # the controller routes to it
        self.core.metrics.observe_instance(handle)
        failed_at = self.failed_at.pop(handle.instance_id, None)
        if failed_at is None:
            return  # a new instance (a scale-out), not a recovery: the control loop logs it
        down_s = time.monotonic() - failed_at
        logger.warning(
            "instance %s recovered: a new process serves, %.1f s after the failure (%s)",
            handle.instance_id,
            down_s,
            handle.ready.start_info() if handle.ready is not None else "",
        )


def health_report(core: ServingCore) -> tuple[int, dict[str, Any]]:
    """/health's status code and body (see the module docstring)."""
    rows, reasons = [], []
    for handle in core.pool.handles.values():
        replacement = handle.num_restarts > 0
        if handle.alive:
            state = "ready"
        elif handle.process.exitcode is None:
            state = "starting"  # a replacement or a new (scaled-out) instance loading
            if handle.ready is not None:  # it served: a role flip, in place
                reasons.append(f"{handle.instance_id} is switching roles")
            else:
                loading = "a replacement after a failure" if replacement else "a new instance"
                reasons.append(f"{handle.instance_id} is loading ({loading})")
        else:
            state = "failed"  # dead and not replaced: out of restart budget
            reasons.append(f"{handle.instance_id} failed (out of restart budget)")
        rows.append(
            {"instance_id": handle.instance_id, "state": state, "num_restarts": handle.num_restarts}
        )
    num_ready = sum(1 for row in rows if row["state"] == "ready")
    if core.draining:
        status, reasons = "draining", ["shutting down"]
    elif num_ready == 0:
        status = "down"
    else:
        status = "ok" if num_ready == len(rows) else "degraded"
    body: dict[str, Any] = {"status": status, "num_instances": num_ready}
    body.update(num_configured=len(rows), reason="; ".join(reasons) or None, instances=rows)
    code = 200 if status in ("ok", "degraded") else 503
    return code, body
