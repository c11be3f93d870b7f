"""One controller, two drivers (DESIGN.md §10): a scripted P/D workload through the simulator and
through the server's core gives the same controller effects in the same order; and so does one
through the elastic simulator with a scripted drain whose decodes migrate (DESIGN.md §10.3).

The server side runs on scripted instances: an in-process fake of the backend that answers with
the `StepReport`s the simulated instances' events stand for (a first token with its `KVReady` from
P, a `HandoffDone` from D, a finished delta, a `MigratedOut` from a draining D). That fake is
acceptable here ONLY because this test is about the controller's effects, not about instances:
every instance publishes the load the simulator's instance had at that moment, so the dispatcher
is asked the same questions, and the test checks that the server's driver turns reports into the
same controller events the simulator's does, and executes the effects as commands (`AddRequest`,
`ResumeRequest` with P's `KVSource`, `ReleaseKV`, `MigrateOut`). Live P/D against real instance
processes is `test_pd_live.py`; live migration `test_migration_live.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from hyperflexis.backends.messages import (
    AddRequest,
    HandoffDone,
    InstanceReady,
    KVReady,
    MigratedOut,
    MigrateOut,
    OutputDelta,
    ReleaseKV,
    ResumeRequest,
    StepReport,
)
from hyperflexis.cluster import LoadSnapshot
from hyperflexis.cluster.controller import Controller
from hyperflexis.cluster.controller_events import (
    DrainDue,
    Effect,
    Event,
    HandOff,
    InstanceDown,
    Migrate,
    MovedOut,
    MoveOut,
    PrefillDone,
    Reject,
    Release,
    RequestArrived,
    RequestEnded,
    Route,
    TransferEnded,
)
from hyperflexis.scheduler.config import Role
from hyperflexis.server import core as core_module
from hyperflexis.server.access import Access
from hyperflexis.server.core import ServingCore
from hyperflexis.server.errors import APIError
from hyperflexis.server.protocol import parse_completion
from hyperflexis.sim import Deployment
from hyperflexis.sim.elastic import ElasticTimes
from hyperflexis.transfer.base import PoolDescriptor, PoolLayout
from hyperflexis.workloads import RequestSpec
from tests.sim.elastic_helpers import TIMES, elastic, phased_workload
from tests.sim.helpers import CLASSES, EveryOtherRejected, simulator, workload
from tests.sim.test_elastic_migration import ScaleInAt

Step = tuple[float, Event, list[list[LoadSnapshot]]]  # when, what, the snapshots each decision saw


def _record_sim(load: Sequence[RequestSpec]) -> tuple[list[Step], list[Effect]]:
    sim = simulator("hyperflexis", Deployment.disaggregated(2, 2), dispatch=EveryOtherRejected())
    steps, effects = _logged(sim.controller)
    result = sim.run(tuple(load))
    assert result.num_unfinished == 0
    return steps, effects


def _record_drain(load: Sequence[RequestSpec]) -> tuple[list[Step], list[Effect]]:
    """1 P + 2 D in the elastic simulator; `decode-1` is scaled in with a deadline of 0, so
    every decode on it that has tokens to go moves (the two drivers estimate their paces apart;
    at 0 both move the same requests)."""
    times = ElasticTimes(
        TIMES.control_interval_s, TIMES.role_switch_s, TIMES.stop_s, drain_deadline_s=0.0
    )
    sim = elastic(
        Deployment.disaggregated(1, 2), dispatch=EveryOtherRejected(), link_policy="all",
        times=times,
    )  # fmt: skip
    scaler = ScaleInAt(sim.scaler.context)
    scaler.victim = "decode-1"
    sim.scaler = scaler
    steps, effects = _logged(sim.cluster.controller)
    result = sim.run_elastic(tuple(load))
    assert result.sim.num_unfinished == 0
    return steps, effects


def _logged(ctl: Controller) -> tuple[list[Step], list[Effect]]:
    """Every event `ctl` handles from now on, with the snapshots each decision saw; its
    effects."""
    steps: list[Step] = []
    effects: list[Effect] = []
    handle, snapshots = ctl.handle, ctl._snapshots

    def logged_handle(now: float, event: Event) -> list[Effect]:
        steps.append((now, event, []))
        out = handle(now, event)
        effects.extend(out)
        return out

    def logged_snapshots(ids: Sequence[str], now: float) -> Sequence[LoadSnapshot]:
        seen = list(snapshots(ids, now))
        steps[-1][2].append(seen)
        return seen

    ctl.handle = logged_handle  # type: ignore[method-assign]
    ctl._snapshots = logged_snapshots
    return steps, effects


@dataclass(eq=False)
class ScriptedHandle:
    """An instance as the core sees it; it records the commands it is sent."""

    instance_id: str
    ready: InstanceReady
    snapshot: LoadSnapshot | None = None
    sent: list[Any] = field(default_factory=list)
    alive: bool = True
    num_dispatched: int = 0
    correction_factor: float = 1.0
    num_preemptions: int = 0
    # Its process, as the cost meter reads it: a stopped instance holds no machine.
    process: Any = field(default_factory=lambda: SimpleNamespace(exitcode=0, pid=None))

    @property
    def role(self) -> Role:
        return self.ready.role

    def send(self, command: Any) -> None:
        self.sent.append(command)


class ScriptedPool:
    max_context_len = 4096
    vocab_size = 100

    def __init__(self, snapshots: Sequence[LoadSnapshot]) -> None:
        layout = PoolLayout(400, 16, 2, 2, 8, "float32")
        self.handles = {
            s.instance_id: ScriptedHandle(
                s.instance_id,
                InstanceReady(
                    s.instance_id, 0, 4096, 100, s, s.role,
                    PoolDescriptor("shm", f"pool-{s.instance_id}", 0, layout, None),
                ),
                snapshot=s,
            )
            for s in snapshots
        }  # fmt: skip

    def snapshots(self) -> list[LoadSnapshot]:
        return [h.snapshot for h in self.live() if h.snapshot is not None]

    def get(self, instance_id: str) -> ScriptedHandle:
        return self.handles[instance_id]

    def live(self) -> list[ScriptedHandle]:
        return [h for h in self.handles.values() if h.alive]


class Replay:
    """Feeds the simulator's controller events to a `ServingCore` as requests and reports."""

    def __init__(self, specs: dict[str, RequestSpec], first: list[LoadSnapshot]) -> None:
        self.specs = specs
        self.pool = ScriptedPool(first)
        self.now = 0.0
        self.core = ServingCore(
            self.pool,  # type: ignore[arg-type]
            EveryOtherRejected(),
            None,  # type: ignore[arg-type]  # prompts come as token ids
            Access(CLASSES),
            "tiny",
        )
        self.sim_id: dict[str, str] = {}  # the server's request id -> the simulator's
        self.server_id: dict[str, str] = {}

    def publish(self, decisions: list[list[LoadSnapshot]]) -> None:
        for snapshots in decisions:
            for s in snapshots:
                self.pool.handles[s.instance_id].snapshot = s

    def step(self, now: float, event: Event) -> None:
        self.now = now
        if isinstance(event, RequestArrived):
            self._submit(self.specs[event.request.request_id])
            return
        handoff = self.core.handoff
        if isinstance(event, DrainDue):  # as the server's control loop does for a drain
            handoff.draining.add(event.instance_id)
            handoff.drain_due(event.instance_id, event.deadline_s, now)
            return
        if isinstance(event, InstanceDown):  # the drained instance stopped
            handoff.on_retired(self.pool.handles[event.instance_id], now)  # type: ignore[arg-type]
            return
        if isinstance(event, MovedOut):
            self._moved_out(event)
            return
        rid = self.server_id.get(getattr(event, "request_id"))  # noqa: B009
        if rid is None:  # the simulator records a rejected request: the server answered 503
            assert isinstance(event, RequestEnded)
            return
        stream = self.core.streams[rid]
        handle = self.pool.handles[stream.instance_id]
        report = StepReport(handle.instance_id, handle.snapshot)  # type: ignore[arg-type]
        if isinstance(event, PrefillDone):
            report.deltas.append(OutputDelta(rid, [5], "t"))
            report.kv_ready.append(KVReady(rid, (0, 1), 20, 30.0, 0.0, 0.1))
        elif isinstance(event, TransferEnded):
            report.handoffs.append(HandoffDone(rid, event.ok, 0.01, 4096))
        elif isinstance(event, RequestEnded):
            report.deltas.append(OutputDelta(rid, [5], "t", "length"))
        else:
            raise AssertionError(f"the workload has no {event!r}")
        self.core.on_report(handle, report)  # type: ignore[arg-type]

    def _moved_out(self, event: MovedOut) -> None:
        """The draining instance's answer to `MigrateOut`, after the one token the server has."""
        handle = self.pool.handles[event.instance_id]
        report = StepReport(handle.instance_id, handle.snapshot)  # type: ignore[arg-type]
        rid = self.server_id[event.request_id]
        blocks = (0, 1) if event.num_kv_tokens else ()
        moved = MigratedOut(rid, event.moved, blocks, event.num_kv_tokens, num_output_tokens=1)
        report.migrated.append(moved)
        self.core.on_report(handle, report)  # type: ignore[arg-type]

    def _submit(self, spec: RequestSpec) -> None:
        body = {
            "prompt": [1] * spec.prompt_len,
            "max_tokens": spec.output_len,
            "slo_class": spec.slo_class,
        }
        before = set(self.core.streams)
        try:
            self.core.submit(parse_completion(body, {}), None, spec.arrival_s)
        except APIError as exc:
            assert exc.status == 503
            return
        (rid,) = set(self.core.streams) - before
        self.sim_id[rid], self.server_id[spec.request_id] = spec.request_id, rid


def _in_sim_ids(effects: list[Effect], replay: Replay) -> list[Effect]:
    """The server's effects with the simulator's request ids (a rejected request has none on
    the server: its id there was never kept)."""
    out: list[Effect] = []
    for effect in effects:
        rid = replay.sim_id.get(effect.request_id)
        if rid is None:
            assert isinstance(effect, Reject)
            rid = "?"
        out.append(type(effect)(rid, *_fields(effect)[1:]))
    return out


def _fields(effect: Effect) -> list[Any]:
    return [getattr(effect, name) for name in effect.__slots__]


def test_the_simulator_and_the_server_core_get_the_same_effects_in_the_same_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load = workload(num_requests=40, rate_rps=40.0)
    steps, sim_effects = _record_sim(load)
    kinds = {type(e) for e in sim_effects}
    assert {Route, Reject, HandOff, Release} <= kinds  # the workload exercises them all
    specs = {spec.request_id: spec for spec in load}
    replay = Replay(specs, _initial_snapshots(steps))
    monkeypatch.setattr(core_module.time, "monotonic", lambda: replay.now)
    _assert_same_effects(replay, steps, sim_effects)
    # The effects became commands: each hand-off a ResumeRequest carrying P's blocks, each
    # release a ReleaseKV to P.
    handles = replay.pool.handles
    resumes = [c for h in handles.values() for c in h.sent if isinstance(c, ResumeRequest)]
    releases = [c for h in handles.values() for c in h.sent if isinstance(c, ReleaseKV)]
    added = [c for h in handles.values() for c in h.sent if isinstance(c, AddRequest)]
    assert len(resumes) == sum(isinstance(e, HandOff) for e in sim_effects)
    assert len(releases) == sum(isinstance(e, Release) for e in sim_effects)
    assert len(added) == sum(isinstance(e, Route) for e in sim_effects)
    assert all(r.kv is not None and r.kv.block_ids == (0, 1) for r in resumes)
    assert all(r.output_token_ids == [5] and r.num_text_chars_sent == 1 for r in resumes)
    assert replay.core.streams == {}


def _assert_same_effects(replay: Replay, steps: list[Step], sim_effects: list[Effect]) -> None:
    """Replay the simulator's steps through the server's core: the same effects, in order
    (rejections compared by reason: their ids are the server's)."""
    for now, event, decisions in steps:
        replay.publish(decisions)
        replay.step(now, event)
    server_effects = _in_sim_ids(replay.core.handoff.effects, replay)
    sim_named = [e if not isinstance(e, Reject) else Reject("?", e.reason) for e in sim_effects]
    assert server_effects == sim_named


def _initial_snapshots(
    steps: list[Step], ids: Sequence[str] = ("prefill-0", "prefill-1", "decode-0", "decode-1")
) -> list[LoadSnapshot]:
    """Every instance's first published load: from the first decision that saw it."""
    seen: dict[str, LoadSnapshot] = {}
    for _, _, decisions in steps:
        for snapshots in decisions:
            for s in snapshots:
                seen.setdefault(s.instance_id, s)
    assert set(seen) == set(ids), seen
    return [seen[i] for i in ids]


def test_a_drain_that_migrates_gives_the_same_effects_in_the_same_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load = phased_workload([(10.0, 6.0, 300, 300)])
    steps, sim_effects = _record_drain(load)
    moves = [e for e in sim_effects if isinstance(e, Migrate)]
    assert moves and all(m.from_id == "decode-1" and m.with_kv for m in moves)
    specs = {spec.request_id: spec for spec in load}
    held: list[Replay] = []  # the clock from the core's start on (its cost meter reads it)
    monkeypatch.setattr(core_module.time, "monotonic", lambda: held[0].now if held else 0.0)
    replay = Replay(specs, _initial_snapshots(steps, ("prefill-0", "decode-0", "decode-1")))
    held.append(replay)
    _assert_same_effects(replay, steps, sim_effects)
    # Each MoveOut a MigrateOut to the draining instance, each Migrate a ResumeRequest to the
    # target carrying the draining instance's leased blocks.
    handles = replay.pool.handles
    asked = [c for c in handles["decode-1"].sent if isinstance(c, MigrateOut)]
    assert len(asked) == sum(isinstance(e, MoveOut) for e in sim_effects) >= len(moves)
    resumes = [c for c in handles["decode-0"].sent if isinstance(c, ResumeRequest)]
    moved_ids = {replay.server_id[m.request_id] for m in moves}
    pulls = [r for r in resumes if r.request_id in moved_ids]
    assert len(pulls) == len(moves)
    assert all(r.kv is not None and r.kv.instance_id == "decode-1" for r in pulls)
    assert replay.core.streams == {}


def test_the_controller_is_the_one_both_drivers_hold() -> None:
    sim = simulator("hyperflexis", Deployment.disaggregated(1, 1))
    assert isinstance(sim.controller, Controller)
    replay = Replay({}, [_snap(i) for i in ("prefill-0", "decode-0")])
    assert isinstance(replay.core.handoff.controller, Controller)
    assert replay.core.handoff.controller.links == {"prefill-0": frozenset({"decode-0"})}


def _snap(instance_id: str) -> LoadSnapshot:
    from tests.cluster.helpers import snap

    return snap(instance_id, role="prefill" if instance_id.startswith("p") else "decode")
