"""The server's side of its instances (`InstancePool`): start them through a backend, send
commands, read their reports, stop them; and the `local` backend, processes on this host. Each
instance gets a command channel in and a report channel out (pipes here, sockets from a Ray
actor: `backends/ray_backend.py`).

Commands go through a sender thread per instance, never straight from the event loop: an
instance busy in a long step stops reading its pipe, and a blocking send on a full pipe would
freeze the whole server (and, while the instance waits to send its report, deadlock both).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from hyperflexis.backends.base import Backend, ConnectedHandler, InstanceHandle, InstanceProcess
from hyperflexis.backends.messages import (
    Heartbeat,
    InstanceFailed,
    InstanceReady,
    Report,
    Shutdown,
    StepReport,
)
from hyperflexis.backends.worker import run_instance
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.scheduler.config import Role
from hyperflexis.transfer.shm import SEGMENT_PREFIX, unlink_segments_of
from hyperflexis.transfer.weights import WEIGHT_SEGMENT_PREFIX

__all__ = ["InstanceHandle", "InstancePool", "LocalBackend", "specs_for_roles"]

ReportHandler = Callable[["InstanceHandle", StepReport], None]
ExitHandler = Callable[["InstanceHandle"], None]
ReadyHandler = Callable[["InstanceHandle"], None]


def specs_for_roles(base: InstanceSpec, roles: Sequence[tuple[str, Role]]) -> list[InstanceSpec]:
    """One spec per (instance id, role): `base`'s settings with its scheduler in that role and
    seed `base.seed + i` for the i-th instance."""
    return [
        dataclasses.replace(
            base,
            instance_id=instance_id,
            scheduler_config=dataclasses.replace(base.scheduler_config, role=role),
            seed=base.seed + i,
        )
        for i, (instance_id, role) in enumerate(roles)
    ]


class InstancePool:
    """Starts, talks to and stops the instance processes."""

    def __init__(self, specs: Sequence[InstanceSpec], backend: Backend | None = None) -> None:
        ids = [s.instance_id for s in specs]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"invalid instances: need one or more unique ids, got {ids}")
        self.specs = list(specs)
        self.backend = LocalBackend() if backend is None else backend
        self.handles: dict[str, InstanceHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: tuple[ReportHandler, ExitHandler, ReadyHandler | None] | None = None
        self._limits: tuple[int, int] | None = None  # vocab size, context: fixed at start
        self.retired: list[InstanceHandle] = []  # scaled in: asked to exit, joined at `stop`

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float) -> None:
        """Spawn every instance and wait until all are ready; raises RuntimeError (after
        stopping the others) if one fails or the time runs out."""
        for spec in self.specs:
            self.handles[spec.instance_id] = self._spawn(spec)
        try:
            self._wait_connected(timeout_s)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, spec: InstanceSpec) -> InstanceHandle:
        return self.backend.spawn(spec, self._on_connected)

    def _on_connected(self, handle: InstanceHandle) -> None:
        """A handle's channels arrived (a backend's thread): read it on the loop from now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._add_reader, handle)

    def _wait_connected(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for handle in self.handles.values():
            if not handle.connected.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(
                    f"instance {handle.instance_id} did not connect within {timeout_s:.0f} s "
                    f"({handle.process.describe()})"
                )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {h.reports: h for h in self.handles.values() if h.reports is not None}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(h.instance_id for h in pending.values())
                raise RuntimeError(f"instances not ready after {timeout_s:.0f} s: {names}")
            for conn in wait(list(pending), timeout=left):
                assert isinstance(conn, Connection)
                handle = pending.pop(conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    raise RuntimeError(
                        f"instance {handle.instance_id} exited while starting "
                        f"(exit code {handle.process.exitcode})"
                    ) from None
                if isinstance(message, InstanceFailed):
                    raise RuntimeError(
                        f"instance {handle.instance_id} failed to start: {message.message}"
                    )
                if not isinstance(message, InstanceReady):
                    raise RuntimeError(f"instance {handle.instance_id} sent {message!r} first")
                handle.ready = message
                handle.snapshot = message.snapshot

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_report: ReportHandler,
        on_exit: ExitHandler,
        on_ready: ReadyHandler | None = None,
    ) -> None:
        """Read every instance's reports on `loop` as they arrive (`on_ready`: a replacement's
        start-up message; `on_exit`: its pipe closed)."""
        self._loop = loop
        self._handlers = (on_report, on_exit, on_ready)
        for handle in self.handles.values():
            self._add_reader(handle)

    def _add_reader(self, handle: InstanceHandle) -> None:
        """Read `handle` on the loop once its channels are there (else `_on_connected` will)."""
        assert self._loop is not None and self._handlers is not None
        reports = handle.reports
        if reports is None or reports.closed or handle.killed:
            return
        if self.handles.get(handle.instance_id) is not handle:
            return  # replaced or retired before it connected
        self._loop.add_reader(reports.fileno(), self._read, handle, *self._handlers)

    def replace(self, instance_id: str) -> InstanceHandle:
        """Start a new process from a failed instance's spec under the same id (weights from a
        live peer where instances publish theirs, else from disk); it serves once its
        `InstanceReady` reaches `on_ready`. Never blocks on the start."""
        old = self.handles[instance_id]
        self.kill(old)
        old.process.join(0.5)  # dead or closing: reap it
        self.backend.cleanup(old)
        handle = self._spawn(self._replacement_spec(old.spec))
        handle.alive = False  # not dispatched to until ready
        handle.num_restarts = old.num_restarts + 1
        self.handles[instance_id] = handle
        if self._loop is not None:
            self._add_reader(handle)
        return handle

    def add(self, spec: InstanceSpec) -> InstanceHandle:
        """Start a new instance (a scale-out) under a new id, weights as a replacement's; it
        takes no traffic until its `InstanceReady` reaches `on_ready`. Never blocks."""
        if spec.instance_id in self.handles:
            raise ValueError(f"invalid instance id {spec.instance_id!r}: already in use")
        handle = self._spawn(self._replacement_spec(spec))
        handle.alive = False  # not dispatched to until ready
        self.handles[spec.instance_id] = handle
        self.specs.append(spec)
        if self._loop is not None:
            self._add_reader(handle)
        return handle

    def retire(self, instance_id: str) -> InstanceHandle:
        """Stop a drained instance (a scale-in): it leaves the pool at once and is asked to
        exit; its exit is not a failure. Never blocks."""
        handle = self.handles.pop(instance_id)
        self._detach(handle)
        handle.alive = False
        handle.send(Shutdown())
        handle.send(None)
        self.retired.append(handle)
        return handle

    def _replacement_spec(self, spec: InstanceSpec) -> InstanceSpec:
        """`spec`, with weights from a live peer's published segment when it publishes its own
        and a peer has (the backend's `peer_weight_source`; the load falls back to disk on any
        mismatch); else from disk."""
        peers = [h.ready.weights_manifest for h in self.live() if h.ready is not None]
        manifest = next((m for m in peers if m is not None), None)
        if not spec.publish_weights or manifest is None:
            return dataclasses.replace(spec, weight_source="disk", peer_weights=None)
        source = self.backend.peer_weight_source
        return dataclasses.replace(spec, weight_source=source, peer_weights=manifest)

    def kill(self, handle: InstanceHandle) -> None:
        """SIGKILL or its backend's kill (a frozen process cannot resist it, and never wakes
        to send stale output) and stop reading it; its channels close."""
        self._detach(handle)
        handle.alive = False
        handle.process.kill()
        handle.send(None)
        handle.close_channels()

    def _read(
        self,
        handle: InstanceHandle,
        on_report: ReportHandler,
        on_exit: ExitHandler,
        on_ready: ReadyHandler | None,
    ) -> None:
        reports = handle.reports
        assert reports is not None  # read only once connected
        try:
            while reports.poll():
                message: Report = reports.recv()
                handle.last_heard_s = time.monotonic()
                if isinstance(message, Heartbeat):
                    continue
                if isinstance(message, InstanceReady):
                    handle.ready = message
                    handle.snapshot = message.snapshot
                    handle.alive = True
                    if on_ready is not None:
                        on_ready(handle)
                elif isinstance(message, StepReport):
                    handle.snapshot = message.snapshot
                    handle.num_preemptions = message.num_preemptions
                    handle.num_rejections = message.num_rejections
                    handle.correction_factor = message.correction_factor
                    handle.step_ratio_moments = message.step_ratio_moments
                    handle.step_fit_moments = message.step_fit_moments
                    on_report(handle, message)
                elif isinstance(message, InstanceFailed):
                    raise EOFError(message.message)
        except (EOFError, OSError):
            self._detach(handle)
            handle.alive = False
            on_exit(handle)

    def _detach(self, handle: InstanceHandle) -> None:
        reports = handle.reports
        if self._loop is not None and reports is not None and not reports.closed:
            self._loop.remove_reader(reports.fileno())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask every instance to exit, then terminate (and finally kill) the stragglers, the
        retired ones included."""
        for handle in self.handles.values():
            self._detach(handle)
            if not handle.connected.is_set():
                handle.process.kill()  # never placed or never connected: nothing to ask
            handle.send(Shutdown())
            handle.send(None)  # ends the sender thread after the shutdown command
        every = [*self.handles.values(), *self.retired]
        deadline = time.monotonic() + timeout_s
        for handle in every:
            handle.process.join(max(0.0, deadline - time.monotonic()))
        for handle in every:
            if handle.process.is_alive():
                handle.process.terminate()
                handle.process.join(1.0)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(1.0)
            handle.alive = False
            handle.close_channels()
            self.backend.cleanup(handle)
        self.backend.close()

    # -- state ------------------------------------------------------------------------------

    def live(self) -> list[InstanceHandle]:
        return [h for h in self.handles.values() if h.alive]

    def snapshots(self) -> list[LoadSnapshot]:
        return [h.snapshot for h in self.live() if h.snapshot is not None]

    def get(self, instance_id: str) -> InstanceHandle:
        return self.handles[instance_id]

    @property
    def vocab_size(self) -> int:
        return self._fixed_limits()[0]

    @property
    def max_context_len(self) -> int:
        """The smallest context among the instances: a request must fit wherever it goes."""
        return self._fixed_limits()[1]

    def _fixed_limits(self) -> tuple[int, int]:
        """From the first instances' start-up messages, kept while replacements load (they run
        the same specs)."""
        if self._limits is None:
            ready = [h.ready for h in self.handles.values() if h.ready is not None]
            self._limits = (
                min(r.vocab_size for r in ready),
                min(r.max_context_len for r in ready),
            )
        return self._limits


class LocalProcess:
    """A `multiprocessing` process as an `InstanceProcess`."""

    def __init__(self, process: BaseProcess) -> None:
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def node(self) -> str:
        return socket.gethostname()

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        """SIGKILL, unless it already ended."""
        if self.process.pid is not None and self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    def describe(self) -> dict[str, object]:
        return {"backend": "local", "node": self.node}


class LocalBackend(Backend):
    """Instance processes on this host, spawned with a pipe each way (the default)."""

    name = "local"

    def spawn(self, spec: InstanceSpec, on_connected: ConnectedHandler) -> InstanceHandle:
        """One instance process and its pipes and sender thread; it reports `InstanceReady`
        (or `InstanceFailed`) when its model is loaded. Its pipes exist at once."""
        context = multiprocessing.get_context("spawn")
        command_reader, command_writer = context.Pipe(duplex=False)
        report_reader, report_writer = context.Pipe(duplex=False)
        process = context.Process(
            target=run_instance,
            args=(spec, command_reader, report_writer),
            name=f"hyperflexis-{spec.instance_id}",
            daemon=True,  # never outlives the server, even if the server dies abruptly
        )
        process.start()
        # Close our copies of the child's ends, so each side sees EOF when the other exits.
        command_reader.close()
        report_writer.close()
        handle = InstanceHandle(spec, LocalProcess(process), command_writer, report_reader)
        handle.start_sender()
        return handle

    def cleanup(self, handle: InstanceHandle) -> None:
        """The shared-memory segments (KV pool, published weights) of an instance that has
        exited: one that was killed could not remove its own."""
        unlink_dead_segments(handle.process)


def unlink_dead_segments(process: InstanceProcess) -> None:
    """Unlink the /dev/shm segments of `process` on this host once it has exited."""
    pid = process.pid
    if pid is not None and process.exitcode is not None:
        unlink_segments_of(pid, (SEGMENT_PREFIX, WEIGHT_SEGMENT_PREFIX))
