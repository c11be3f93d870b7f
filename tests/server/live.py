"""Starts `hyperflexis serve` as a subprocess for live tests and stops it again, and freezes its
instance processes, so a test decides when the engines may move on instead of racing them."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from hyperflexis.backends.worker import PROCESS_NAME_PREFIX
from tests.server.scrape import value

READY = re.compile(r"HyperFlexis serving on (http://\S+)")
START_TIMEOUT_S = 240.0  # a loaded 2-core machine may need to profile and load two instances


@dataclass
class LiveServer:
    process: subprocess.Popen[str]
    url: str
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # the key, when it has --api-key

    def client(self, timeout_s: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def instances(self) -> list[dict[str, object]]:
        response = httpx.get(f"{self.url}/debug/instances", headers=self.headers, timeout=10)
        response.raise_for_status()
        rows: list[dict[str, object]] = response.json()
        return rows

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/debug/stats", headers=self.headers, timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the `/metrics` samples called `name` with (at least) `labels`; 0 if none."""
        return value(httpx.get(f"{self.url}/metrics", timeout=10).text, name, **labels)

    def instance_pids(self) -> dict[str, int]:
        """Each live instance process's PID by instance id, from the server's process tree
        (the API shows no PIDs; an instance names itself `hf:<id>` in /proc/PID/comm)."""
        found = {}
        for pid in descendants(self.process.pid):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name.startswith(PROCESS_NAME_PREFIX) and is_running(pid):
                found[name.removeprefix(PROCESS_NAME_PREFIX)] = pid
        return found

    @contextlib.contextmanager
    def frozen(self, instance_ids: Sequence[str] | None = None) -> Iterator[None]:
        """Every instance process (or those of `instance_ids`) stopped (SIGSTOP) for the block:
        no engine takes a step, so nothing the engines do can race the test; the server process
        itself keeps running."""
        by_id = self.instance_pids()
        ids = [str(r["instance_id"]) for r in self.instances() if r["alive"]]
        pids = [by_id[i] for i in ids if instance_ids is None or i in instance_ids]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            for pid in pids:
                wait_until(lambda pid=pid: _state(pid) in ("T", "t"), f"{pid} stopped")
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)


def wait_idle(server: LiveServer, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Poll until no request runs or waits, the server holds none open and every KV block is
    free on every live instance; returns the live instances' rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in server.instances() if r["alive"]]
        idle = all(
            r["num_running"] == 0
            and r["num_waiting"] == 0
            and r["num_free_blocks"] == r["num_blocks"]
            for r in rows
        )
        stats = server.stats()
        if idle and stats["num_open_requests"] == 0:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"requests still held after {timeout_s} s: {rows} {stats}")
        time.sleep(0.05)


def send_raw(server: LiveServer, path: str, body: dict[str, Any]) -> socket.socket:
    """Send one request on a connection of its own; closing the socket is the client going
    away, at a moment the test chooses."""
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    payload = json.dumps(body).encode()
    auth = "".join(f"{k}: {v}\r\n" for k, v in server.headers.items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> None:
    received = b""
    while marker not in received:
        chunk = sock.recv(4096)
        assert chunk, f"the connection closed before {marker!r}: {received[-500:]!r}"
        received += chunk


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def start_server(
    args: Sequence[str], tmp_dir: Path, env: dict[str, str] | None = None
) -> LiveServer:
    """Start `hyperflexis serve --port 0 ARGS` and wait for its readiness line."""
    stderr_path = tmp_dir / "serve.stderr"
    stderr = stderr_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "hyperflexis", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
    )
    stderr.close()
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        match = READY.search(line)
        if match:
            return LiveServer(process, match.group(1), stderr_path, seen, _auth(args))
    stop_server(process)
    raise RuntimeError(
        f"server did not become ready; stdout: {''.join(seen)!r}; "
        f"stderr: {stderr_path.read_text(errors='replace')[-3000:]}"
    )


def _auth(args: Sequence[str]) -> dict[str, str]:
    """The header that carries the server's `--api-key`, if it has one."""
    if "--api-key" not in args:
        return {}
    return {"Authorization": f"Bearer {args[list(args).index('--api-key') + 1]}"}


def stop_server(process: subprocess.Popen[str], timeout_s: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (Linux /proc)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    return _state(pid) not in (None, "Z", "X")


def _state(pid: int) -> str | None:
    """The process state letter of `pid` (Linux /proc); None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]
