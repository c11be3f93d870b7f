"""The reliability suite's shared pieces: a live server started for one module, and the check
every case ends with: no request left in the server or any instance, every KV block free, and no
process beyond the configured ones (instance processes and multiprocessing's helpers, counted
when the server became ready)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.server.live import LiveServer, descendants, is_running, start_server, stop_server

QUIET_TIMEOUT_S = 30.0


@dataclass
class Served:
    """A live server and what it looked like when it became ready."""

    live: LiveServer
    num_instances: int
    num_processes: int  # running descendants when ready

    @property
    def url(self) -> str:
        return self.live.url

    def health(self) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"{self.url}/health", timeout=10)
        body: dict[str, Any] = response.json()
        return response.status_code, body

    def running_descendants(self) -> list[int]:
        return [pid for pid in descendants(self.live.process.pid) if is_running(pid)]


@contextlib.contextmanager
def serve(args: Sequence[str], tmp: Path, num_instances: int) -> Iterator[Served]:
    """`hyperflexis serve --instances N ARGS` for the block; stopped (and checked) after it."""
    live = start_server(["--instances", str(num_instances), *args], tmp)
    try:
        wait_quiet_processes(live, num_instances, None)
        served = Served(live, num_instances, len(_running(live)))
        yield served
    finally:
        stop_server(live.process)


def _running(live: LiveServer) -> list[int]:
    return [pid for pid in descendants(live.process.pid) if is_running(pid)]


def wait_quiet_processes(live: LiveServer, num_instances: int, num_processes: int | None) -> None:
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while True:
        pids = live.instance_pids()
        running = _running(live)
        if len(pids) == num_instances and num_processes in (None, len(running)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"processes not back to the configured ones: instances {pids}, "
                f"running {len(running)} (expected {num_processes})"
            )
        time.sleep(0.05)


def assert_quiescent(served: Served, timeout_s: float = QUIET_TIMEOUT_S) -> None:
    """No request left anywhere, every KV block free, every instance ready, and no process
    beyond the configured ones (a replaced instance's old process is gone)."""
    live = served.live
    deadline = time.monotonic() + timeout_s
    while True:
        rows = live.instances()
        stats = live.stats()
        status, health = served.health()
        idle = all(
            r["alive"]
            and r["num_running"] == 0
            and r["num_waiting"] == 0
            and r["num_free_blocks"] == r["num_blocks"]
            for r in rows
        )
        quiet = idle and stats["num_open_requests"] == 0 and stats["num_queued"] == 0
        if quiet and status == 200 and health["status"] == "ok":
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"not quiescent after {timeout_s} s: {rows} {stats} {health}")
        time.sleep(0.05)
    wait_quiet_processes(live, served.num_instances, served.num_processes)
