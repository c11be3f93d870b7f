"""Run `hyperflexis serve` as a child process for demos, benchmarks and tests.

The server runs in its own process group (its instance processes included), so stopping it
takes everything it started with it, on success, error or Ctrl-C alike. It is ready when it
prints its readiness line, `HyperFlexis serving on http://HOST:PORT`; its output is kept (last
lines) for error messages and drained all along so a full pipe never blocks it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType

READY = re.compile(r"HyperFlexis serving on (https?://\S+)")
_TAIL_LINES = 60


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in this (main) process, so `with ServerProcess(...)` blocks
    stop their servers when a script is terminated, not only on Ctrl-C. For entry points only:
    it replaces the process-wide handler."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class ServerProcess:
    """`hyperflexis serve ARGS --host HOST --port PORT` (default port: any free one) as a
    context manager.

    `with ServerProcess(["--instances", "2"]) as server: ... server.url ...` waits for the
    readiness line (raising RuntimeError with the server's output if it exits or takes longer
    than `ready_timeout_s`) and stops the server on exit.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
        echo: bool = False,
    ) -> None:
        self.host = host
        # Port 0: the server takes any free port and its readiness line says which.
        self.url = f"http://{host}:{port or 0}"  # the real one once ready
        self._args = [*args, "--host", host, "--port", str(port or 0)]
        self._ready_timeout_s = ready_timeout_s
        self._env = env
        self._echo = echo  # copy the server's output to stderr as it comes
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._ready = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "hyperflexis", "serve", *self._args]

    @property
    def pid(self) -> int:
        """The server's PID, which is also its process group's (its instances are in it)."""
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def output_tail(self) -> str:
        return "".join(self._tail)

    def start(self) -> ServerProcess:
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # the readiness line must not sit in a buffer
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # its own process group, so stop() reaches its children
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGINT to the server's process group, then SIGTERM, then SIGKILL; idempotent."""
        process = self._process
        if process is None:
            return
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            self._signal_group(process.pid, sig)
            try:
                process.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while children linger: the group gets a final SIGKILL.
        self._signal_group(process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._ready_timeout_s
        while not self._ready.wait(0.1):
            if self._process.poll() is not None:
                self._reader_join()
                raise RuntimeError(
                    f"hyperflexis serve exited with code {self._process.returncode} before it "
                    f"was ready:\n{self.output_tail}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"hyperflexis serve was not ready after {self._ready_timeout_s:g} s:\n"
                    f"{self.output_tail}"
                )

    def _reader_join(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=2.0)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._tail.append(line)
            if self._echo:
                sys.stderr.write(line)
            if not self._ready.is_set():
                match = READY.search(line)
                if match:
                    self.url = match.group(1).rstrip("/")
                    self._ready.set()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
