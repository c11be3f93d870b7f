"""A pool of pre-started workers (issue 15): processes with the interpreter, torch and the engine
already imported, holding no weights and taking no traffic, that each become an instance when
handed a spec. A new instance then skips process start-up (about 2 s of interpreter and torch
imports here), so its time until serving is its weight load plus its engine's build.

What the pool costs is measured, not guessed (`WorkerCost`): each idle worker's proportional
set size (its share of resident memory: the interpreter, torch's libraries, no weights) and the
CPU it used since it went idle (near zero: it blocks on its pipe). `take` refills the pool with a
new worker in the background, so the next scale-out finds one waiting.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from hyperflexis.backends.local import InstanceHandle, LocalProcess
from hyperflexis.backends.start_phases import process_age_s
from hyperflexis.backends.worker import run_instance
from hyperflexis.engine.factory import InstanceSpec


@dataclass(frozen=True, slots=True)
class WorkerIdle:
    """A pre-started worker's first report: it is ready to become an instance."""

    pid: int
    startup_s: float  # its process start-up: interpreter and imports


@dataclass(frozen=True, slots=True)
class BecomeInstance:
    """The pool's one command to a pre-started worker: build this instance and serve."""

    spec: InstanceSpec


@dataclass(frozen=True, slots=True)
class WorkerCost:
    """What one idle pre-started worker costs the host."""

    pid: int
    pss_bytes: int  # proportional set size (Linux smaps_rollup); 0 where unavailable
    idle_cpu_s: float  # CPU seconds (user + system) it used since it went idle


def run_prestarted(commands: Connection, reports: Connection) -> None:
    """Process entry point (spawned): import what an instance needs, say so, wait for a spec."""
    import torch  # noqa: F401 (imported ahead: the point of a pre-started worker)

    import hyperflexis.engine.model_runner
    import hyperflexis.transfer.instance_weights  # noqa: F401 (every weight source)

    try:
        reports.send(WorkerIdle(os.getpid(), process_age_s()))
        command = commands.recv()
    except (EOFError, OSError):
        return  # the pool is gone or closed this worker
    if isinstance(command, BecomeInstance):
        run_instance(command.spec, commands, reports, asked_s=time.monotonic())


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    commands: Connection  # the pool's (write) end
    reports: Connection  # the pool's (read) end
    idle: WorkerIdle | None = None
    idle_since_cpu_s: float = 0.0


class PrestartPool:
    """`size` pre-started workers, kept topped up as they are taken."""

    def __init__(self, size: int, refill: bool = True) -> None:
        """`refill`: start a replacement for each worker taken (off: the pool only drains)."""
        if size < 1:
            raise ValueError(f"a pre-start pool needs at least one worker, got {size}")
        self.size = size
        self.refill = refill
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def start(self) -> None:
        """Spawn the workers; they import in the background (`wait_idle` waits for them)."""
        while len(self._workers) < self.size:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        command_reader, command_writer = self._context.Pipe(duplex=False)
        report_reader, report_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_prestarted,
            args=(command_reader, report_writer),
            name="hyperflexis-prestarted",
            daemon=True,  # never outlives the server
        )
        process.start()
        command_reader.close()
        report_writer.close()
        return _Worker(process, command_writer, report_reader)

    def wait_idle(self, timeout_s: float) -> None:
        """Until every worker reports idle; RuntimeError when one exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while pending := {w.reports: w for w in self._workers if w.idle is None}:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(pending)} pre-started workers not idle in {timeout_s} s")
            for conn in wait(list(pending), timeout=left):
                worker = pending[conn]  # type: ignore[index]
                try:
                    message = worker.reports.recv()
                except (EOFError, OSError):
                    raise RuntimeError("a pre-started worker exited while starting") from None
                assert isinstance(message, WorkerIdle), message
                worker.idle = message
                worker.idle_since_cpu_s = _cpu_s(message.pid)

    def take(self, spec: InstanceSpec, timeout_s: float = 60.0) -> InstanceHandle:
        """An idle worker turned into `spec`'s instance (its `InstanceReady` follows on the
        handle's report pipe once built); a replacement starts in the background (`refill`)."""
        idle = [w for w in self._workers if w.idle is not None]
        if not idle:
            self.wait_idle(timeout_s)
            idle = self._workers
        if not idle:
            raise RuntimeError("the pre-start pool is empty")
        worker = idle[0]
        self._workers.remove(worker)
        if self.refill:
            self._workers.append(self._spawn())
        worker.commands.send(BecomeInstance(spec))
        handle = InstanceHandle(spec, LocalProcess(worker.process), worker.commands, worker.reports)
        handle.start_sender()
        return handle

    def costs(self) -> list[WorkerCost]:
        """What each idle worker costs now."""
        return [
            WorkerCost(w.idle.pid, _pss_bytes(w.idle.pid), _cpu_s(w.idle.pid) - w.idle_since_cpu_s)
            for w in self._workers
            if w.idle is not None
        ]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every idle worker (each exits on its pipe's EOF), then terminate stragglers."""
        for worker in self._workers:
            worker.commands.close()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
            worker.reports.close()
        self._workers = []


def _pss_bytes(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
