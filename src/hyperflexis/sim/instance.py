"""A simulated instance: a real `Scheduler` from the registry, stepped as the engine loop steps
it (schedule, run, update) with the latency model's prediction as the step's duration."""

from __future__ import annotations

from hyperflexis.cluster.snapshot import LoadSnapshot, take_snapshot
from hyperflexis.core.request import FinishReason, Request
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.output import SchedulerOutput
from hyperflexis.sim.fast_forward import DUMMY_TOKEN_ID, DecodeWindow, StepRecord, plan_window


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
    ) -> None:
        self.instance_id = instance_id
        self.scheduler = scheduler
        self.cost_model = cost_model
        self.fast_forward = fast_forward
        self.step_log: list[StepRecord] | None = [] if record_steps else None
        self.step: SchedulerOutput | None = None  # the regular step in flight
        self.window: DecodeWindow | None = None  # the fast-forward window in flight
        self.generation = 0  # bumped whenever a pushed end event is superseded
        self.start_pending = False  # a StepStart for it is queued
        # The latest snapshot, reused until the scheduler's state changes (a step starts or
        # ends, a request arrives), as a real instance publishes one per step.
        self._snapshot: LoadSnapshot | None = None
        self.num_steps = 0  # steps run, fast-forwarded ones included
        self.num_fast_forward_steps = 0

    @property
    def role(self) -> str:
        return self.scheduler.config.role

    @property
    def busy(self) -> bool:
        return self.step is not None or self.window is not None

    # -- requests in ------------------------------------------------------------------------

    def add_request(self, request: Request, now: float) -> float | None:
        """Queue a request. When a fast-forward window is running it is cut after the step in
        flight (the next step must see the request); returns the window's new end time then."""
        self.sync(now)
        self.scheduler.add_request(request)
        self._snapshot = None
        window = self.window
        if window is not None and window.cut_after_step_in_flight(now):
            self.generation += 1
            return window.end_s
        return None

    def sync(self, now: float) -> None:
        """Bring a fast-forward window's requests and KV to their state at `now`, before anyone
        reads the scheduler."""
        if self.window is not None and self.window.apply(self.scheduler, now):
            self._snapshot = None

    def snapshot(self, now: float, draining: bool = False) -> LoadSnapshot:
        """The instance's load at `now`, for the dispatcher. A snapshot stays valid while the
        scheduler's state does not change, so one taken earlier (with its earlier `time_s`) is
        returned then: the dispatcher projects stale snapshots forward itself."""
        self.sync(now)
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
            window = plan_window(scheduler, self.cost_model, now)
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
        return now + self.cost_model.predict(output.features()), []

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
        return self.scheduler.update(output, sampled, now)

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
