"""What the server sees of an instance, whichever backend runs it (DESIGN.md §10.4).

An instance is its process (`InstanceProcess`: alive, exit code, kill, join, where it runs) and
the project's own two channels: a command connection in and a report connection out. Per-step
traffic never goes through a backend's own calls (a Ray actor call costs about 20 ms here); a
backend only places, starts, watches and stops processes. `local` (`backends/local.py`, the
default) runs them on this host; `ray` (`backends/ray_backend.py`) runs each as a Ray actor that
connects its two channels back to the server.

A handle's channels may arrive after it is made (a Ray actor connects once placed and started):
`connected` is set then, and commands queued before wait in its outbox.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Protocol

from hyperflexis.backends.messages import Command, InstanceReady
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.scheduler.config import Role


class InstanceProcess(Protocol):
    """The process part of an instance, as `multiprocessing.Process` has it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None:
        """None while it runs (or waits to be placed); its exit status once it ended."""

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None:
        """End it now (SIGKILL, `ray.kill`): a frozen process cannot resist."""

    @property
    def node(self) -> str:
        """The machine it runs on, as its backend names it ("" until placed)."""

    def describe(self) -> dict[str, object]:
        """Where it runs, for /debug/instances (backend, node, actor name)."""


@dataclass(eq=False)
class InstanceHandle:
    """One instance as the server sees it."""

    spec: InstanceSpec
    process: InstanceProcess
    commands: Connection | None  # the server's (write) end; None until connected
    reports: Connection | None  # the server's (read) end; None until connected
    ready: InstanceReady | None = None  # its start-up message
    snapshot: LoadSnapshot | None = None  # the latest published load
    alive: bool = True  # False once its channel closed or it failed
    num_preemptions: int = 0  # latest totals the instance reported
    num_rejections: int = 0
    correction_factor: float = 1.0
    step_ratio_moments: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    step_fit_moments: list[float] = field(default_factory=list)
    num_dispatched: int = 0  # requests the server sent it
    last_heard_s: float = field(default_factory=time.monotonic)  # its latest message, monotonic
    num_restarts: int = 0  # how many processes ran under this id before this one
    connected: threading.Event = field(default_factory=threading.Event)
    killed: bool = False  # killed or closed: a late connection is closed at once
    _outbox: queue.SimpleQueue[Command | None] = field(default_factory=queue.SimpleQueue)
    _sender: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.commands is not None and self.reports is not None:
            self.connected.set()

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

    @property
    def role(self) -> Role:
        """The role the instance says it serves (its spec's until it is ready)."""
        if self.ready is not None:
            return self.ready.role
        if self.snapshot is not None:
            return self.snapshot.role
        return self.spec.scheduler_config.role

    def connect(self, commands: Connection, reports: Connection) -> bool:
        """Its channels arrived; False (and both closed) when it was killed meanwhile."""
        self.commands, self.reports = commands, reports
        self.connected.set()
        if self.killed:
            self.close_channels()
            return False
        return True

    def close_channels(self) -> None:
        self.killed = True
        for conn in (self.commands, self.reports):
            if conn is not None:
                conn.close()

    def send(self, command: Command | None) -> None:
        """Queue a command for the instance; never blocks. None ends the sender thread."""
        self._outbox.put(command)

    def start_sender(self) -> None:
        """Start the thread that sends queued commands (once, right after creation)."""
        self._sender = threading.Thread(
            target=self._send_loop, name=f"send-{self.instance_id}", daemon=True
        )
        self._sender.start()

    def _send_loop(self) -> None:
        while (command := self._outbox.get()) is not None:
            while not self.connected.wait(0.1):
                if self.killed:
                    return
            try:
                assert self.commands is not None
                self.commands.send(command)
            except (BrokenPipeError, EOFError, OSError):
                return  # the instance is gone; its report channel tells the server


ConnectedHandler = Callable[[InstanceHandle], None]


class Backend(ABC):
    """Places, starts, watches and stops instance processes; the registry names them."""

    name: str
    # The weight source of an instance started while a peer publishes (transfer/weights.py):
    # `peer` maps the peer's segment; `peer-dist` also reaches peers on other nodes.
    peer_weight_source = "peer"

    @abstractmethod
    def spawn(self, spec: InstanceSpec, on_connected: ConnectedHandler) -> InstanceHandle:
        """Start `spec`'s instance and return its handle at once (sender thread running). A
        handle whose channels come later is passed to `on_connected` (on any thread) then."""

    def cleanup(self, handle: InstanceHandle) -> None:  # noqa: B027 (optional hook)
        """After its process ended: what it could not remove itself (shared memory)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the backend (after every instance stopped)."""
