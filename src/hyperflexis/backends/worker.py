"""One instance process: its engine loop, driven by commands from the server's pipe.

The loop reads like the brief: drain commands, step while there is work, publish what the step
produced together with a fresh load snapshot, and block on the command pipe when idle (no busy
spin). When the server goes away its end of the pipe closes and the loop exits.
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
from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    Command,
    InstanceFailed,
    InstanceReady,
    OutputDelta,
    Shutdown,
    StepReport,
)
from hyperflexis.cluster.snapshot import take_snapshot
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.perf.online import OnlineCorrection

# An engine with requests that ran an empty step (nothing fits now) waits this long for a
# command before trying again, instead of spinning.
STALLED_WAIT_S = 0.005
PROCESS_NAME_PREFIX = "hf:"  # an instance process's name (/proc/PID/comm) is this + its id


def run_instance(spec: InstanceSpec, commands: Connection, reports: Connection) -> None:
    """Process entry point (spawned): build the engine, say ready, loop until told to stop."""
    # Ctrl-C in a terminal reaches the whole process group; the server stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _name_process(spec.instance_id)
    try:
        engine, _, cost_model = build_engine(spec)
    except Exception as exc:  # report any start-up failure instead of dying silently
        _send_quietly(reports, InstanceFailed(spec.instance_id, f"{type(exc).__name__}: {exc}"))
        return
    sender = ReportSender(reports)  # the loop and the heartbeat thread share the pipe
    loop = InstanceLoop(spec.instance_id, engine, cost_model, sender)
    ready = InstanceReady(
        spec.instance_id,
        os.getpid(),
        engine.max_context_len,
        engine.runner.config.vocab_size,
        take_snapshot(spec.instance_id, engine.scheduler, time.monotonic()),
    )
    if sender.send(ready):
        start_heartbeat(sender, spec.instance_id)
        loop.run(commands)
    # Nothing is left to clean up, and interpreter teardown with torch loaded takes seconds on
    # a busy host: leave at once so a shutdown is quick.
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
    ) -> None:
        self.instance_id = instance_id
        self.engine = engine
        self.cost_model = cost_model
        self.reports = reports if isinstance(reports, ReportSender) else ReportSender(reports)
        # Per live request: output tokens and text characters already sent to the server, and
        # when the latest sent token was produced.
        self._sent: dict[str, tuple[int, int, float | None]] = {}
        self._stalled = False  # the last step had work but could schedule nothing

    def run(self, commands: Connection) -> None:
        """Until `Shutdown`, the server closing its end, or the server becoming unreachable."""
        while True:
            busy = self.engine.has_unfinished()
            timeout = None if not busy else (STALLED_WAIT_S if self._stalled else 0.0)
            drained = self._drain(commands, timeout)
            if drained is None:
                return
            deltas, changed = drained
            stepped = self.engine.has_unfinished()
            if stepped:
                deltas += self._step()
            if not (deltas or changed or (stepped and not self._stalled)):
                continue  # nothing new to tell: idle, or a step that could schedule nothing
            if not self._publish(deltas, stepped):
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
                if isinstance(command, AddRequest | AbortRequest):
                    deltas += self._apply(command)
                changed = True
                ready = commands.poll(0)
        except (EOFError, OSError):
            return None  # the server is gone
        return deltas, changed

    def _apply(self, command: AddRequest | AbortRequest) -> list[OutputDelta]:
        if isinstance(command, AbortRequest):
            if self._sent.pop(command.request_id, None) is not None:
                self.engine.abort(command.request_id)
            return []
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

    # -- the step ---------------------------------------------------------------------------

    def _step(self) -> list[OutputDelta]:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # fail the requests, keep the instance serving
            return self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
        self._stalled = not outputs and self.engine.last_step.num_tokens == 0
        return [self._delta(output) for output in outputs if output.request_id in self._sent]

    def _fail_all(self, message: str) -> list[OutputDelta]:
        deltas = []
        for request_id in list(self._sent):
            self._sent.pop(request_id)
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
        return dataclasses.replace(
            delta,
            stop_reason=completion.stop_reason,
            queue_s=metrics.queue_s,
            ttft_s=metrics.ttft_s,
            tpot_s=metrics.tpot_s,
            attained=output.attained,
            num_preemptions=metrics.num_preemptions,
        )

    def _publish(self, deltas: list[OutputDelta], stepped: bool) -> bool:
        scheduler = self.engine.scheduler
        report = StepReport(
            instance_id=self.instance_id,
            snapshot=take_snapshot(self.instance_id, scheduler, time.monotonic()),
            deltas=deltas,
            num_preemptions=scheduler.num_preemptions,
            num_rejections=scheduler.num_rejections,
            step_execute_s=self.engine.last_step.execute_s if stepped else 0.0,
            correction_factor=1.0 if self.cost_model is None else self.cost_model.factor,
        )
        return self.reports.send(report)


def _send_quietly(reports: Connection, message: object) -> bool:
    """Send; False when the server is gone (the caller then exits)."""
    try:
        reports.send(message)
    except (BrokenPipeError, EOFError, OSError):
        return False
    return True
