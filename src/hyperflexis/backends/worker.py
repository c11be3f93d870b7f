"""One instance process: its engine loop, driven by commands from the server's pipe.

The loop reads like the brief: drain commands, advance the P/D hand-offs (`kv_handoff`), step
while there is work, publish what the step produced together with a fresh load snapshot, and
block on the command pipe when idle (no busy spin; only as long as no lease is due and no pull
is to poll). When the server goes away its end of the pipe closes and the loop exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from hyperflexis.backends.heartbeat import ReportSender, start_heartbeat
from hyperflexis.backends.kv_handoff import PREFILLED, KVHandoffs, open_transport
from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    Command,
    HandoffDone,
    InstanceFailed,
    InstanceReady,
    KVReady,
    MigratedOut,
    MigrateOut,
    OutputDelta,
    ReleaseKV,
    ResumeRequest,
    Shutdown,
    StepReport,
    SwitchRole,
)
from hyperflexis.backends.role_switch import RoleSwitch, migrate_out
from hyperflexis.backends.start_phases import process_age_s, start_phases
from hyperflexis.cluster.snapshot import take_snapshot
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.perf.online import OnlineCorrection
from hyperflexis.transfer.instance_weights import InstanceWeights, weight_origin

# An engine with requests that ran an empty step (nothing fits now) waits this long for a
# command before trying again, instead of spinning.
STALLED_WAIT_S = 0.005
PROCESS_NAME_PREFIX = "hf:"  # an instance process's name (/proc/PID/comm) is this + its id


def run_instance(
    spec: InstanceSpec,
    commands: Connection,
    reports: Connection,
    asked_s: float | None = None,
    exit_process: bool = True,
) -> None:
    """Process entry point (spawned): build the engine, say ready, loop until told to stop.
    `asked_s`: when, on this process's monotonic clock, it was asked to become this instance
    (a pre-started worker, `backends/prestart.py`); None: when the process began.
    `exit_process` False: return instead of leaving the process (a Ray actor's method)."""
    startup_s = process_age_s() if asked_s is None else time.monotonic() - asked_s
    # Ctrl-C in a terminal reaches the whole process group; the server stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _name_process(spec.instance_id)
    transport = None
    weights = InstanceWeights(spec.weight_source, spec.peer_weights, spec.publish_weights)
    try:
        transport = open_transport(spec)
        storage = None if transport is None else transport.allocate
        build_start = time.perf_counter()
        built = build_engine(spec, kv_storage=storage, weights=weights)
        engine, runner, cost_model = built
        phases = start_phases(startup_s, weights.load_s, time.perf_counter() - build_start)
        handoffs = KVHandoffs(engine, spec.kv_transfer_timeout_s, transport, runner.kv_cache)
    except Exception as exc:  # report any start-up failure instead of dying silently
        if transport is not None:
            transport.close()
        weights.close()
        _send_quietly(reports, InstanceFailed(spec.instance_id, f"{type(exc).__name__}: {exc}"))
        return
    sender = ReportSender(reports)  # the loop and the heartbeat thread share the pipe
    loop = InstanceLoop(spec.instance_id, engine, cost_model, sender, handoffs)
    ready = InstanceReady(
        spec.instance_id,
        os.getpid(),
        engine.max_context_len,
        engine.runner.config.vocab_size,
        take_snapshot(spec.instance_id, engine.scheduler, time.monotonic()),
        role=spec.scheduler_config.role,
        kv_pool=handoffs.pool,
        **weight_origin(weights),
        start_phases_s=phases,
    )
    loop.switch_role = RoleSwitch(spec, built, ready)
    try:
        if sender.send(ready):
            start_heartbeat(sender, spec.instance_id)
            loop.run(commands)
    finally:
        handoffs.close()  # unlinks a /dev/shm pool: os._exit below skips finalizers
        weights.close()  # and a published weight segment
    # Nothing is left to clean up, and interpreter teardown with torch loaded takes seconds on
    # a busy host: leave at once so a shutdown is quick.
    if not exit_process:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _name_process(instance_id: str) -> None:
    """Show the instance in `ps`/`top` (and to tests walking /proc) as `hf:<instance id>`; the
    kernel keeps 15 bytes. Linux only; elsewhere the name stays python's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(f"{PROCESS_NAME_PREFIX}{instance_id}"[:15])


class InstanceLoop:
    """Applies commands to the engine, steps it, and publishes a `StepReport` per step."""

    def __init__(
        self,
        instance_id: str,
        engine: LLMEngine,
        cost_model: OnlineCorrection | None,
        reports: Connection | ReportSender,
        handoffs: KVHandoffs | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.engine = engine
        self.cost_model = cost_model
        self.reports = reports if isinstance(reports, ReportSender) else ReportSender(reports)
        # A loop around an engine alone has no pool: hand-offs sent to it recompute.
        self.handoffs = KVHandoffs(engine, timeout_s=10.0) if handoffs is None else handoffs
        # Per live request: output tokens and text characters already sent to the server (for
        # a resumed one, what the client had before), and when the latest sent token was made.
        self._sent: dict[str, tuple[int, int, float | None]] = {}
        self._stalled = False  # the last step had work but could schedule nothing
        self._handoffs: list[HandoffDone] = []  # ended since the last report
        self._kv_ready: list[KVReady] = []
        self._migrated: list[MigratedOut] = []
        self.switch_role: RoleSwitch | None = None  # role flips; None: this loop cannot flip

    def run(self, commands: Connection) -> None:
        """Until `Shutdown`, the server closing its end, or the server becoming unreachable."""
        handoffs = self.handoffs
        while True:
            busy = self.engine.has_unfinished()
            timeout = (
                handoffs.wake_in_s() if not busy else (STALLED_WAIT_S if self._stalled else 0.0)
            )
            drained = self._drain(commands, timeout)
            if drained is None:
                return
            deltas, changed = drained
            self._handoffs += handoffs.poll()
            expired = self.engine.expire_leases()
            stepped = self.engine.has_unfinished()
            if stepped:
                deltas += self._step()
            freed = handoffs.take_freed()  # blocks a pull had set aside went back: load changed
            news = bool(deltas or changed or expired or self._handoffs or self._kv_ready or freed)
            if not (news or (stepped and not self._stalled)):
                continue  # nothing new to tell: idle, or a step that could schedule nothing
            if not self._publish(deltas, stepped, expired):
                return

    # -- commands ---------------------------------------------------------------------------

    def _drain(
        self, commands: Connection, timeout: float | None
    ) -> tuple[list[OutputDelta], bool] | None:
        """Apply every queued command, first waiting up to `timeout` (None: forever) for one.
        Returns the deltas of requests that failed to add and whether anything changed; None
        when the loop must stop."""
        deltas: list[OutputDelta] = []
        changed = False
        try:
            ready = commands.poll(timeout)
            while ready:
                command: Command = commands.recv()
                if isinstance(command, Shutdown):
                    return None
                deltas += self._apply(command)
                changed = True
                ready = commands.poll(0)
        except (EOFError, OSError):
            return None  # the server is gone
        return deltas, changed

    def _apply(self, command: Command) -> list[OutputDelta]:
        if isinstance(command, AbortRequest):
            self._sent.pop(command.request_id, None)
            self.handoffs.abort(command.request_id)
            self.engine.abort(command.request_id)  # a lease under its id goes too
            return []
        if isinstance(command, ReleaseKV):
            self.engine.release_lease(command.request_id)
            return []
        if isinstance(command, ResumeRequest):
            return self._resume(command)
        if isinstance(command, MigrateOut):
            moved = migrate_out(self.engine, command.request_id)
            if moved.moved:
                del self._sent[command.request_id]  # its stream goes on from the peer
            self._migrated.append(moved)
            return []
        if isinstance(command, SwitchRole):
            if self.switch_role is None:
                raise RuntimeError(f"{self.instance_id}: this instance cannot switch roles")
            if command.hang_s > 0:
                time.sleep(command.hang_s)  # a test's hung switch: the heartbeat beats on
            self.reports.send(self.switch_role(command.role))
            return []
        assert isinstance(command, AddRequest)
        try:
            self.engine.add_request(
                command.prompt_token_ids,
                command.sampling_params,
                slo=command.slo,
                request_id=command.request_id,
                arrival_s=command.arrival_s,
            )
        except ValueError as exc:
            return [
                OutputDelta(command.request_id, [], "", "error", error=str(exc), error_status=400)
            ]
        self._sent[command.request_id] = (0, 0, None)
        return []

    def _resume(self, command: ResumeRequest) -> list[OutputDelta]:
        try:
            self._handoffs += self.handoffs.resume(command)
        except ValueError as exc:
            return [
                OutputDelta(command.request_id, [], "", "error", error=str(exc), error_status=400)
            ]
        sent = (len(command.output_token_ids), command.num_text_chars_sent, None)
        self._sent[command.request_id] = sent
        return []

    # -- the step ---------------------------------------------------------------------------

    def _step(self) -> list[OutputDelta]:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # fail the requests, keep the instance serving
            return self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
        self._stalled = not outputs and self.engine.last_step.num_tokens == 0
        self._kv_ready += self.handoffs.kv_ready(outputs)
        return [self._delta(output) for output in outputs if output.request_id in self._sent]

    def _fail_all(self, message: str) -> list[OutputDelta]:
        deltas = []
        for request_id in list(self._sent):
            self._sent.pop(request_id)
            self.handoffs.abort(request_id)
            self.engine.abort(request_id)
            deltas.append(OutputDelta(request_id, [], "", "error", error=message))
        return deltas

    def _delta(self, output: RequestOutput) -> OutputDelta:
        completion = output.outputs[0]
        num_tokens, num_chars, sent_token_s = self._sent[output.request_id]
        token_ids = completion.token_ids
        metrics = output.metrics
        last_token_s = metrics.last_token_s
        gap_s = None
        if len(token_ids) > num_tokens and sent_token_s is not None and last_token_s is not None:
            gap_s = last_token_s - sent_token_s
        delta = OutputDelta(
            request_id=output.request_id,
            token_ids=token_ids[num_tokens:],
            text=completion.text[num_chars:],
            finish_reason=completion.finish_reason,
            num_prompt_tokens=len(output.prompt_token_ids),
            num_output_tokens=len(token_ids),
            logprobs=None if completion.logprobs is None else completion.logprobs[num_tokens:],
            prompt_logprobs=output.prompt_logprobs if num_tokens == 0 and token_ids else None,
            inter_token_latency_s=gap_s,
        )
        if not output.finished:
            sent = (len(token_ids), len(completion.text), last_token_s)
            self._sent[output.request_id] = sent
            return delta
        del self._sent[output.request_id]
        if completion.finish_reason == PREFILLED:
            # Its stream goes on from a decode instance (the step's KVReady says where from).
            return dataclasses.replace(delta, finish_reason=None)
        return dataclasses.replace(
            delta,
            stop_reason=completion.stop_reason,
            queue_s=metrics.queue_s,
            ttft_s=metrics.ttft_s,
            tpot_s=metrics.tpot_s,
            attained=output.attained,
            num_preemptions=metrics.num_preemptions,
        )

    def _publish(self, deltas: list[OutputDelta], stepped: bool, expired: list[str]) -> bool:
        scheduler, model = self.engine.scheduler, self.cost_model
        report = StepReport(
            instance_id=self.instance_id,
            snapshot=take_snapshot(self.instance_id, scheduler, time.monotonic()),
            deltas=deltas,
            num_preemptions=scheduler.num_preemptions,
            num_rejections=scheduler.num_rejections,
            step_execute_s=self.engine.last_step.execute_s if stepped else 0.0,
            correction_factor=1.0 if model is None else model.factor,
            step_ratio_moments={} if model is None else dict(model.ratio_moments),
            step_fit_moments=[] if model is None else list(model.fit_moments),
            kv_ready=self._kv_ready,
            handoffs=self._handoffs,
            leases_expired=expired,
            migrated=self._migrated,
        )
        self._kv_ready, self._handoffs, self._migrated = [], [], []
        return self.reports.send(report)


def _send_quietly(reports: Connection, message: object) -> bool:
    """Send; False when the server is gone (the caller then exits)."""
    try:
        reports.send(message)
    except (BrokenPipeError, EOFError, OSError):
        return False
    return True
