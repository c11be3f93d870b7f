"""A cluster of real `LLMEngine`s on a virtual clock, driven event by event the way the simulator
drives its instances: the engine side of the parity tests (DESIGN.md §1).

Each engine runs `LLMEngine.step()`, unchanged, in a thread of its own; the driver hands the turn
to one thread at a time and waits for it back, so the run is sequential and deterministic. The
step runner is a fake with no model (each chunk that samples gets a fixed token): inside
`execute` it hands the turn back with the time its step ends, the latency model's prediction for
the batch, and waits until the driver's clock gets there. Meanwhile the driver handles what
happens in between: arrivals, routed by the real dispatcher over every engine's load snapshot at
that instant (a busy engine's mid-step), other engines' steps, and in P/D the hand-off of each
prefilled request to a linked decode engine once its KV has crossed (`LLMEngine.receive`).

The driver's rules are the simulator's, written again from the engine's side: events at one
instant in `sim.events`' order (step ends, then KV arrivals, then arrivals, then step starts); a
snapshot is taken when first read after the engine's state changed (a step started or ended, a
request came in); an engine whose step schedules nothing waits for its next request.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.snapshot import LoadSnapshot, take_snapshot
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.core.request import Request
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO, SLOClasses
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler import KVBlockManager, SchedulerConfig, SchedulerOutput, make_scheduler
from hyperflexis.sim import Deployment, KVTransferModel
from hyperflexis.sim.events import Arrival, EventQueue, StepEnd, StepStart, TransferDone
from hyperflexis.sim.fast_forward import StepRecord
from hyperflexis.workloads.spec import RequestSpec, Workload

SAMPLED_TOKEN_ID = 7  # what the fake runner samples; requests run with ignore_eos
TURN_TIMEOUT_S = 30.0  # an engine thread that keeps the turn this long is stuck

# What the parity tests compare per request: (request_id, record status, arrival, first token,
# finish, output tokens), as `bench.metrics.RequestRecord` has them.
Outcome = tuple[str, str, float, float | None, float | None, int]
# A final finish reason -> the record status the simulator files it under.
STATUS_OF_REASON = {"stop": "completed", "length": "completed", "rejected": "rejected"}


class VirtualClock:
    """The driver's clock; it moves only when the driver takes the next event."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class FakeModel:
    vocab_size: int = 1000
    eos_token_ids: tuple[int, ...] = ()  # no EOS: requests end at max_tokens, as simulated


class SilentDetokenizer:
    def add_token(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class EngineThread:
    """One engine, its fake runner and the thread its steps run on."""

    def __init__(
        self, instance_id: str, scheduler_config: SchedulerConfig, cluster: EngineCluster
    ) -> None:
        self.instance_id = instance_id
        self.role = scheduler_config.role
        self._clock = cluster.clock
        self._cost_model = cluster.cost_model
        kv = KVBlockManager(cluster.num_kv_blocks, cluster.block_size)
        scheduler = make_scheduler(cluster.policy, scheduler_config, kv, cluster.cost_model)
        self.engine = LLMEngine(self, scheduler, lambda _: SilentDetokenizer(), clock=cluster.clock)
        self.step_log: list[StepRecord] = []
        self.busy = False  # a step is in flight (its thread waits inside `execute`)
        self.start_pending = False  # a StepStart for it is queued
        self._snapshot: LoadSnapshot | None = None
        self._end_s: float | None = None  # when the step in flight ends
        self._outputs: list[RequestOutput] = []  # of the latest finished step
        self._error: Exception | None = None
        self._stopping = False
        self._engine_turn = threading.Semaphore(0)
        self._driver_turn = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, name=instance_id, daemon=True)
        self._thread.start()

    # -- the StepRunner the engine sees -----------------------------------------------------

    config = FakeModel()
    max_model_len = 1 << 20  # never the limit: the KV cache is

    def execute(self, scheduler_output: SchedulerOutput) -> Mapping[str, int]:
        now = self._clock.now
        chunks = scheduler_output.chunks
        self.step_log.append((now, [(c.request_id, c.start_pos, c.num_tokens) for c in chunks]))
        self._end_s = now + self._cost_model.predict(scheduler_output.features())
        self._pass_turn()  # back when the driver's clock reaches the step's end
        return {c.request_id: SAMPLED_TOKEN_ID for c in chunks if c.sample}

    # -- driver side ------------------------------------------------------------------------

    def start_step(self) -> float | None:
        """Run the engine's step up to its batch's execution; returns when that ends, None when
        the step ran no batch (its outputs, rejections, are ready then)."""
        self._snapshot = None
        self._end_s = None
        self._take_turn()
        self.busy = self._end_s is not None
        return self._end_s

    def finish_step(self) -> list[RequestOutput]:
        """The step in flight ends now: the engine records its tokens; returns its outputs."""
        if self._end_s is not None:
            self._end_s = None
            self._take_turn()
        self.busy = False
        self._snapshot = None
        outputs, self._outputs = self._outputs, []
        return outputs

    def add(self, spec: RequestSpec, slo: SLO) -> None:
        self.engine.add_request(
            [3 + i % 100 for i in range(spec.prompt_len)],
            _sampling(spec),
            slo=slo,
            request_id=spec.request_id,
            arrival_s=spec.arrival_s,
        )
        self._snapshot = None

    def receive(self, request: Request) -> None:
        self.engine.receive(request)
        self._snapshot = None

    def snapshot(self, now: float) -> LoadSnapshot:
        if self._snapshot is None:
            self._snapshot = take_snapshot(self.instance_id, self.engine.scheduler, now)
        return self._snapshot

    def stop(self) -> None:
        self._stopping = True
        self._engine_turn.release()
        self._thread.join(TURN_TIMEOUT_S)

    # -- the turn ---------------------------------------------------------------------------

    def _take_turn(self) -> None:
        """Driver: let the engine thread run until it passes the turn back."""
        self._engine_turn.release()
        if not self._driver_turn.acquire(timeout=TURN_TIMEOUT_S):
            raise AssertionError(f"{self.instance_id}: the engine thread is stuck")
        if self._error is not None:
            raise AssertionError(f"{self.instance_id}: the engine failed") from self._error

    def _pass_turn(self) -> None:
        """Engine thread, inside a step: hand the turn to the driver and wait for it back (the
        driver always hands it back, `stop` included, so no timeout here)."""
        self._driver_turn.release()
        self._engine_turn.acquire()
        if self._stopping:
            raise _Stopped

    def _run(self) -> None:
        """Engine thread: one `LLMEngine.step()` per turn."""
        self._engine_turn.acquire()
        while not self._stopping:
            try:
                self._outputs = self.engine.step()
            except _Stopped:
                return
            except Exception as exc:  # reported on the driver's side
                self._error = exc
            self._driver_turn.release()
            self._engine_turn.acquire()


class _Stopped(BaseException):
    """Unwinds an engine thread's step when the run is over (not an `Exception`, so that
    nothing on the way catches it)."""


@dataclass
class EngineRun:
    """What the engines did: each one's steps, each request's outcome and route."""

    step_logs: dict[str, list[StepRecord]]
    outcomes: dict[str, Outcome]
    routes: dict[str, tuple[str, ...]]
    num_preemptions: int


@dataclass
class EngineCluster:
    """Engines for every instance of `deployment`, the dispatcher in front of them."""

    deployment: Deployment
    policy: str
    scheduler_config: SchedulerConfig
    cost_model: StepCostModel
    dispatcher: Dispatcher
    slo_classes: SLOClasses
    num_kv_blocks: int
    block_size: int = 16
    kv_transfer: KVTransferModel | None = None
    clock: VirtualClock = field(default_factory=VirtualClock)

    def run(self, workload: Workload) -> EngineRun:
        engines = [
            EngineThread(instance_id, dataclasses.replace(self.scheduler_config, role=role), self)
            for instance_id, role in self.deployment.instances()
        ]
        try:
            return _Driver(self, engines).run(workload)
        finally:
            for engine in engines:
                engine.stop()


class _Driver:
    def __init__(self, cluster: EngineCluster, engines: list[EngineThread]) -> None:
        self.cluster = cluster
        self.engines = engines
        self.entry = [i for i, e in enumerate(engines) if e.role != "decode"]
        self.decode = [i for i, e in enumerate(engines) if e.role == "decode"]
        self.index = {e.instance_id: i for i, e in enumerate(engines)}
        self.links = cluster.deployment.link_table()
        self.queue = EventQueue()
        self.outcomes: dict[str, Outcome] = {}
        self.routes: dict[str, list[str]] = {}
        self.specs: dict[str, RequestSpec] = {}

    def run(self, workload: Workload) -> EngineRun:
        for spec in workload:
            self.specs[spec.request_id] = spec
            self.queue.push(spec.arrival_s, Arrival(spec))
        clock = self.cluster.clock
        while self.queue:
            clock.now, event = self.queue.pop()
            if isinstance(event, Arrival):
                self._arrive(event.spec)
            elif isinstance(event, StepStart):
                self._start(event.instance_index)
            elif isinstance(event, StepEnd):
                self._end_step(event.instance_index)
            elif isinstance(event, TransferDone):
                self.engines[event.instance_index].receive(event.request)
                self._wake_if_idle(event.instance_index)
        unfinished = [e.instance_id for e in self.engines if e.engine.has_unfinished()]
        assert not unfinished, f"requests left unfinished on {unfinished}"
        return EngineRun(
            step_logs={e.instance_id: e.step_log for e in self.engines},
            outcomes=self.outcomes,
            routes={rid: tuple(path) for rid, path in self.routes.items()},
            num_preemptions=sum(e.engine.scheduler.num_preemptions for e in self.engines),
        )

    def _arrive(self, spec: RequestSpec) -> None:
        now = self.cluster.clock.now
        slo = self.cluster.slo_classes.resolve(spec.slo_class)
        snapshots = [self.engines[i].snapshot(now) for i in self.entry]
        decision = self.cluster.dispatcher.choose(_dispatch(spec, slo), snapshots, now)
        if decision.instance_id is None:
            self.outcomes[spec.request_id] = (
                spec.request_id,
                "rejected",
                spec.arrival_s,
                None,
                now,
                0,
            )
            return
        index = self.index[decision.instance_id]
        assert index in self.entry, decision
        self.routes[spec.request_id] = [decision.instance_id]
        self.engines[index].add(spec, slo)
        self._wake_if_idle(index)

    def _start(self, index: int) -> None:
        engine = self.engines[index]
        engine.start_pending = False
        if engine.busy or not engine.engine.has_unfinished():
            return
        end_s = engine.start_step()
        if end_s is None:
            self._finished(engine, engine.finish_step())  # only rejections: wait for a request
        else:
            self.queue.push(end_s, StepEnd(index, 0))

    def _end_step(self, index: int) -> None:
        engine = self.engines[index]
        self._finished(engine, engine.finish_step())
        self._wake(index)

    def _finished(self, engine: EngineThread, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            if not output.finished:
                continue
            reason = output.outputs[0].finish_reason
            if reason == "prefilled":
                # As the simulator does: the prompt's KV is freed at once (no lease modelled).
                engine.engine.release_lease(output.request_id)
                self._hand_off(engine, output)
                continue
            metrics = output.metrics
            self.outcomes[output.request_id] = (
                output.request_id,
                STATUS_OF_REASON.get(str(reason), "failed"),
                metrics.arrival_s,
                metrics.first_token_s,
                metrics.finish_s,
                len(output.outputs[0].token_ids),
            )

    def _hand_off(self, prefill: EngineThread, output: RequestOutput) -> None:
        """P/D: a linked decode engine takes the prefilled request once its KV has crossed."""
        now = self.cluster.clock.now
        spec = self.specs[output.request_id]
        slo = self.cluster.slo_classes.resolve(spec.slo_class)
        snapshots = [self.engines[i].snapshot(now) for i in self.decode]
        decision = self.cluster.dispatcher.choose_decode(
            _dispatch(spec, slo), prefill.instance_id, snapshots, self.links, now
        )
        assert decision.instance_id in self.links[prefill.instance_id], decision
        self.routes[output.request_id].append(decision.instance_id)
        request = _prefilled(spec, slo, output)
        transfer = self.cluster.kv_transfer
        assert transfer is not None, "a P/D deployment needs a KV transfer model"
        arrive_s = now + transfer.seconds(request.num_prompt_tokens)
        self.queue.push(arrive_s, TransferDone(self.index[decision.instance_id], request))

    def _wake_if_idle(self, index: int) -> None:
        if not self.engines[index].busy:
            self._wake(index)

    def _wake(self, index: int) -> None:
        engine = self.engines[index]
        if not engine.start_pending:
            engine.start_pending = True
            self.queue.push(self.cluster.clock.now, StepStart(index))


def _sampling(spec: RequestSpec) -> SamplingParams:
    return SamplingParams(max_tokens=spec.output_len, temperature=0.0, ignore_eos=True)


def _dispatch(spec: RequestSpec, slo: SLO) -> DispatchRequest:
    return DispatchRequest(spec.request_id, spec.prompt_len, spec.output_len, slo, spec.arrival_s)


def _prefilled(spec: RequestSpec, slo: SLO, output: RequestOutput) -> Request:
    """The request as the decode engine takes it over: its prompt's KV computed, its first
    token out at the prefill engine's time, its preemptions so far counted."""
    request = Request(
        request_id=spec.request_id,
        prompt_token_ids=list(output.prompt_token_ids),
        sampling_params=_sampling(spec),
        slo=slo,
        arrival_s=spec.arrival_s,
    )
    (token_id,) = output.outputs[0].token_ids
    first_token_s = output.metrics.first_token_s
    assert first_token_s is not None
    request.append_token(token_id, first_token_s)
    request.num_computed_tokens = request.num_prompt_tokens
    request.num_preemptions = output.metrics.num_preemptions
    return request
