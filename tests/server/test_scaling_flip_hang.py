"""`serve --scaler` live, P/D: a role flip that never answers is ended, and the instance leaves as a
failed start does, not replaced. One that hangs while its heartbeat goes on is killed after
`--start-timeout-s`; one whose process dies while switching leaves at once. Either way it leaves
the pool, the controller and the lifecycle (event `flip_failed`, logged, counted as a failure);
/health says why while it flips and is "ok" after; requests sent during and after complete with
the same outputs, and every KV block is free on every instance.

The hang is real: `POST /debug/scale`'s `switch_hang_s` makes the worker's loop sleep before it
switches (`SwitchRole.hang_s`), its heartbeat thread beating on, so the instance never looks
silent. Time is controlled by a short start timeout; the hang itself is far longer. The two tests
share one server (2P+2D, at least one of each) and run in order: the first takes decode-1, the
second prefill-1."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.live import (
    LiveServer,
    is_running,
    start_server,
    stop_server,
    wait_idle,
    wait_until,
)
from tests.server.scaling_load import SteadyLoad, complete, rows, scale, scaling
from tests.server.scrape import has, value

START_TIMEOUT_S = 5.0  # a flip in place takes milliseconds; no instance starts here
HANG_S = 120.0  # far past the timeout: only the kill ends it
PROMPTS = [f"the hung flip test {i} says" for i in range(3)]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    live = start_server(
        [
            *("--prefill", "2", "--decode", "2"),
            *("--model", str(server_model_dir), "--profile", str(fixed_profile)),
            *("--api-key", "sk-hang", "--scaler", "static"),
            *("--min-instances", "1", "--max-instances", "2", "--control-interval", "0.2"),
            *("--start-timeout-s", str(START_TIMEOUT_S)),
        ],
        tmp_path_factory.mktemp("flip-hang-server"),
    )
    yield live
    stop_server(live.process)


def _health(server: LiveServer) -> tuple[int, str, str | None]:
    response = httpx.get(f"{server.url}/health", timeout=10)
    body = response.json()
    return response.status_code, body["status"], body["reason"]


def _hang_flip(server: LiveServer, instance_id: str) -> int:
    """Flip `instance_id` with a hung switch; once it is flipping, its PID. While it flips it
    is alive in /proc and heartbeating (not failed as silent) but not served or linked, and
    /health says so."""
    pid = server.instance_pids()[instance_id]
    response = scale(server, "role_switch", instance_id, switch_hang_s=HANG_S)
    assert response.status_code == 200, response.text
    wait_until(lambda: rows(server)[instance_id]["state"] == "flipping", "the flip", 30)
    assert _health(server) == (200, "degraded", f"{instance_id} is switching roles")
    row = rows(server)[instance_id]
    assert not row["alive"] and row["linked"] == [] and is_running(pid)
    return pid


def _events(server: LiveServer, instance_id: str) -> list[tuple[str, str]]:
    found = scaling(server)["events"]
    return [(e["event"], e["detail"]) for e in found if e["instance_id"] == instance_id]


def _left(server: LiveServer, instance_id: str, remaining: list[str]) -> None:
    """`instance_id` is out of the pool (not replaced), the controller (no links, not counted
    by role) and /metrics' gauges, counted as a failure once; /health is "ok"."""
    assert _health(server) == (200, "ok", None)
    left = rows(server)
    assert sorted(left) == remaining and sorted(server.instance_pids()) == remaining
    assert all(instance_id not in row["linked"] for row in left.values())
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for role in ("prefill", "decode"):
        num_up = sum(1 for row in left.values() if row["role"] == role)
        assert value(text, "hyperflexis:instances", role=role) == num_up
    assert not has(text, "hyperflexis:instance_up", engine=instance_id)
    assert value(text, "hyperflexis:instance_failures_total", engine=instance_id) == 1
    assert value(text, "hyperflexis:instance_restarts_total", engine=instance_id) == 0


def test_a_flip_whose_process_dies_leaves_at_once(server: LiveServer) -> None:
    assert _health(server) == (200, "ok", None)
    pid = _hang_flip(server, "decode-1")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "decode-1" not in rows(server), "the dead flip to end", 30)
    assert not is_running(pid)
    (drain, _), (flip, _), (failed, detail) = _events(server, "decode-1")
    assert (drain, flip, failed) == ("drain", "flip", "flip_failed")
    assert detail.startswith("failed while switching roles: exited")  # its code, once reaped
    assert "scaling: instance decode-1 flip_failed" in server.stderr()
    _left(server, "decode-1", ["decode-0", "prefill-0", "prefill-1"])


def test_a_hung_flip_is_killed_after_the_start_timeout_and_leaves(server: LiveServer) -> None:
    assert sorted(rows(server)) == ["decode-0", "prefill-0", "prefill-1"]  # after the above
    static = {p: complete(server, p)[0] for p in PROMPTS}  # before this flip
    load = SteadyLoad(server, PROMPTS, num_streams=2)
    with load.running():
        asked_s = time.monotonic()
        pid = _hang_flip(server, "prefill-1")
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 2, "the load goes on during the flip")
        wait_until(lambda: "prefill-1" not in rows(server), "the hung flip to end", 30)
        ended_s = time.monotonic() - asked_s
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 2, "the load goes on after")
    assert START_TIMEOUT_S < ended_s < HANG_S and not is_running(pid)
    assert not load.errors
    for prompt, text in load.done:
        assert text == static[prompt], prompt
    assert [event for event, _ in _events(server, "prefill-1")] == ["drain", "flip", "flip_failed"]
    detail = _events(server, "prefill-1")[-1][1]
    assert detail == f"no answer to its switch to decode within {START_TIMEOUT_S:g} s"
    logs = server.stderr()
    assert "instance prefill-1: no answer to its role switch (to decode) within" in logs
    assert "scaling: instance prefill-1 flip_failed" in logs
    _left(server, "prefill-1", ["decode-0", "prefill-0"])
    # Out of the lifecycle: decode-0 is the last planned decode instance (the hung one no longer
    # counts as joining that pool), so it may not flip.
    refused = scale(server, "role_switch", "decode-0")
    assert refused.status_code == 400 and "minimum" in refused.json()["error"]["message"]
    for prompt in PROMPTS:
        assert complete(server, prompt)[0] == static[prompt]
    idle = wait_idle(server)  # every KV block free on every instance
    assert sorted(str(r["instance_id"]) for r in idle) == ["decode-0", "prefill-0"]
