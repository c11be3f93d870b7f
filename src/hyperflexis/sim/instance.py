"""A simulated instance: a real `Scheduler` from the registry, stepped as the engine loop steps
it (schedule, run, update) with the latency model's prediction as the step's duration (or, with
step noise, the prediction times the step's factor: `sim.step_noise`); and the factory that
builds one per instance id and role."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from hyperflexis.cluster.snapshot import LoadSnapshot, take_snapshot
from hyperflexis.core.request import FinishReason, Request
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.config import Role, SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager
from hyperflexis.scheduler.output import SchedulerOutput
from hyperflexis.scheduler.registry import make_scheduler
from hyperflexis.sim.fast_forward import DUMMY_TOKEN_ID, DecodeWindow, StepRecord, plan_window
from hyperflexis.sim.step_noise import EXACT_STEPS, StepNoise, StepTimes


class SimInstance:
    """One instance's scheduler and what it is doing: idle, one step in flight, or a window of
    fast-forwarded decode steps. The simulator owns the clock and the event queue; the methods
    here take `now` and return the time of the event to schedule, if any."""

    def __init__(
        self,
        instance_id: str,
        scheduler: Scheduler,
        cost_model: StepCostModel,
        *,
        fast_forward: bool = True,
        record_steps: bool = False,
        reuse_snapshots: bool = True,
        step_times: StepTimes | None = None,
    ) -> None:
        """`step_times`: what each step is charged (None: its prediction).
        `reuse_snapshots=False` takes every snapshot afresh instead of returning the last one
        while it is valid (the elastic simulator's choice; the two give the dispatcher different
        time stamps to project from, so runs differ)."""
        self.instance_id = instance_id
        self.scheduler = scheduler
        self.cost_model = cost_model
        self.fast_forward = fast_forward
        self.step_log: list[StepRecord] | None = [] if record_steps else None
        self.step: SchedulerOutput | None = None  # the regular step in flight
        self.window: DecodeWindow | None = None  # the fast-forward window in flight
        self.generation = 0  # bumped whenever a pushed end event is superseded
        self.start_pending = False  # a StepStart for it is queued
        self.draining = False  # takes no new work: its snapshots say so, the dispatcher skips it
        self.num_incoming = 0  # P/D: KV transfers on their way to it
        self.reuse_snapshots = reuse_snapshots
        # The latest snapshot, reused until the scheduler's state changes (a step starts or
        # ends, a request arrives), as a real instance publishes one per step.
        self._snapshot: LoadSnapshot | None = None
        self.num_steps = 0  # steps run, fast-forwarded ones included
        self.num_fast_forward_steps = 0
        self.step_times = step_times

    @property
    def role(self) -> Role:
        return self.scheduler.config.role

    @property
    def busy(self) -> bool:
        return self.step is not None or self.window is not None

    @property
    def idle(self) -> bool:
        """Nothing running, queued or on its way to it."""
        return not self.busy and not self.scheduler.has_unfinished() and not self.num_incoming

    def succeed(self, old: SimInstance) -> None:
        """Take over from `old`, the same instance under its previous scheduler (a role flip):
        its step counters carry on, and end events pushed for `old` stay stale."""
        self.generation = old.generation + 1
        self.num_steps = old.num_steps
        self.num_fast_forward_steps = old.num_fast_forward_steps

    # -- requests in ------------------------------------------------------------------------

    def add_request(self, request: Request, now: float) -> float | None:
        """Queue a request. When a fast-forward window is running it is cut after the step in
        flight (the next step must see the request); returns the window's new end time then."""
        self.sync(now)
        self.scheduler.add_request(request)
        self._snapshot = None
        return self.cut_window(now)

    def cut_window(self, now: float) -> float | None:
        """End a fast-forward window after its step in flight at `now` (the next step must see
        a change); the window's new end time, or None when nothing was cut."""
        self.sync(now)
        window = self.window
        if window is not None and window.cut_after_step_in_flight(now):
            self.generation += 1
            return window.end_s
        return None

    # -- requests out (a drain: `sim.migration`) --------------------------------------------

    def migrate_out(self, request_id: str, now: float) -> tuple[Request, int] | None:
        """Between two steps: stop decoding `request_id` here for another instance to continue
        it, its computed tokens' KV leased until the pull ends (`release_lease`). The request
        and the number of tokens leased (0: none, it recomputes); None when it does not decode
        here (finished, no output yet, receiving)."""
        if self.busy:
            raise RuntimeError(f"{self.instance_id}: migrate_out during a step")
        scheduler = self.scheduler
        request = scheduler.requests.get(request_id)
        try:
            lease = scheduler.migrate_out(request_id, now)
        except ValueError:
            return None
        assert request is not None  # migrate_out knew it
        self._snapshot = None
        for other in scheduler.leases.take_new():  # prefill leases: freed at once, as ever
            if lease is None or other.request_id != lease.request_id:
                scheduler.release_lease(other.request_id)
        return request, 0 if lease is None else lease.num_tokens

    def release_lease(self, request_id: str) -> bool:
        """Free a migration's leased KV (its pull ended); False when none is held (a P/D
        hand-off's, freed at its prefill's end)."""
        released = self.scheduler.release_lease(request_id)
        if released:
            self._snapshot = None
        return released

    def abort(self, request_id: str, now: float) -> Request | None:
        """End a request here at once, freeing its KV (it goes elsewhere); None if unknown."""
        self.cut_window(now)
        self._snapshot = None
        return self.scheduler.abort_request(request_id, now)

    def sync(self, now: float) -> None:
        """Bring a fast-forward window's requests and KV to their state at `now`, before anyone
        reads the scheduler."""
        if self.window is not None and self.window.apply(self.scheduler, now):
            self._snapshot = None

    def snapshot(self, now: float) -> LoadSnapshot:
        """The instance's load at `now`, for the dispatcher. A snapshot stays valid while the
        scheduler's state does not change, so one taken earlier (with its earlier `time_s`) is
        returned then: the dispatcher projects stale snapshots forward itself."""
        self.sync(now)
        draining = self.draining
        if not self.reuse_snapshots:
            return take_snapshot(self.instance_id, self.scheduler, now, draining=draining)
        cached = self._snapshot
        if cached is None or cached.draining != draining:
            cached = take_snapshot(self.instance_id, self.scheduler, now, draining=draining)
            self._snapshot = cached
        return cached

    # -- steps ------------------------------------------------------------------------------

    def start(self, now: float) -> tuple[float | None, list[Request]]:
        """Start the next step (or fast-forward window) at `now`. Returns its end time (None
        when idle: nothing to run) and the requests the scheduler rejected while choosing."""
        if self.busy:
            raise RuntimeError(f"{self.instance_id}: started while busy")
        scheduler = self.scheduler
        if not scheduler.has_unfinished():
            return None, []
        self._snapshot = None
        if self.fast_forward:
            window = plan_window(scheduler, self.cost_model, now, charge=self._window_charge())
            if window is not None:
                window.step_log = self.step_log
                self.window = window
                self.generation += 1
                return window.end_s, []
        output = scheduler.schedule(now)
        if output.is_empty:
            # Nothing can run (only rejections, or nothing fits): wait for the next request.
            rejected = scheduler.update(output, {}, now) if output.rejected_ids else []
            return None, rejected
        if self.step_log is not None:
            self.step_log.append(
                (now, [(c.request_id, c.start_pos, c.num_tokens) for c in output.chunks])
            )
        self.step = output
        self.generation += 1
        features = output.features()
        step_s = self.cost_model.predict(features)
        if self.step_times is not None:
            step_s = self.step_times.charge(self.num_steps, step_s, features)
        return now + step_s, []

    def _window_charge(self) -> Callable[[int, StepFeatures, float], float] | None:
        """A fast-forward window's step m is the instance's step `num_steps + m` (decode-only,
        as every step of a window is)."""
        times = self.step_times
        if times is None:
            return None
        first = self.num_steps
        return lambda m, features, step_s: times.charge(first + m, step_s, features)

    def finish_step(self, now: float) -> list[Request]:
        """The regular step in flight ends at `now`: record its tokens. Returns the requests
        that finished (completed, prefilled, or rejected when the step was chosen)."""
        output = self.step
        if output is None:
            raise RuntimeError(f"{self.instance_id}: no step in flight")
        self.step = None
        self._snapshot = None
        self.num_steps += 1
        sampled = {c.request_id: DUMMY_TOKEN_ID for c in output.chunks if c.sample}
        finished = self.scheduler.update(output, sampled, now)
        # The simulator models the hand-off by its transfer time, not by the prefill instance's
        # lease: a prefilled request's blocks are freed at once.
        for lease in self.scheduler.leases.take_new():
            self.scheduler.release_lease(lease.request_id)
        return finished

    def finish_window(self, now: float) -> None:
        """The fast-forward window ends at `now`: write all its tokens."""
        window = self.window
        if window is None:
            raise RuntimeError(f"{self.instance_id}: no fast-forward window in flight")
        window.apply(self.scheduler, now)
        self._snapshot = None
        if window.num_applied != window.num_steps:
            raise RuntimeError(f"{self.instance_id}: fast-forward window ended early")
        self.window = None
        self.num_steps += window.num_steps
        self.num_fast_forward_steps += window.num_steps

    def abort_all(self, now: float) -> list[Request]:
        """End every unfinished request (the run is over and they are stuck)."""
        self._snapshot = None
        requests = list(self.scheduler.requests.values())
        for request in requests:
            self.scheduler.finish_request(request.request_id, FinishReason.ERROR, now)
        return requests


@dataclass(frozen=True, slots=True)
class InstanceFactory:
    """Builds a `SimInstance` for an instance id and role: a scheduler from the registry with
    `scheduler_config` in that role, on its own KV cache."""

    policy: str
    scheduler_config: SchedulerConfig
    cost_model: StepCostModel
    num_kv_blocks: int
    block_size: int = 16
    fast_forward: bool = True
    record_steps: bool = False
    reuse_snapshots: bool = True
    step_noise: StepNoise = EXACT_STEPS  # what steps are charged against their prediction

    def build(self, instance_id: str, role: Role) -> SimInstance:
        config = dataclasses.replace(self.scheduler_config, role=role)
        kv = KVBlockManager(self.num_kv_blocks, self.block_size)
        scheduler = make_scheduler(self.policy, config, kv, self.cost_model)
        return SimInstance(
            instance_id,
            scheduler,
            self.cost_model,
            fast_forward=self.fast_forward,
            record_steps=self.record_steps,
            reuse_snapshots=self.reuse_snapshots,
            step_times=self.step_noise.for_instance(instance_id),
        )
