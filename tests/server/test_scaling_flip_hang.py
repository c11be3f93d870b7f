"""`serve --scaler` live, P/D: a role flip that hangs while its heartbeat goes on is ended after
`--start-timeout-s`: the instance process is killed and leaves the pool, the controller and the
lifecycle (event `flip_failed`, logged, counted as a failure); /health says why while it flips and
is "ok" after; requests sent during and after complete with the same outputs, and every KV block
is free on every instance.

The hang is real: `POST /debug/scale`'s `switch_hang_s` makes the worker's loop sleep before it
switches (`SwitchRole.hang_s`), its heartbeat thread beating on, so the instance never looks
silent. Time is controlled by a short start timeout; the hang itself is far longer."""

from __future__ import annotations

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

START_TIMEOUT_S = 3.0  # a flip in place takes milliseconds; a start needs none here
HANG_S = 120.0  # far past the timeout: only the kill ends it
PROMPTS = [f"the hung flip test {i} says" for i in range(3)]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    live = start_server(
        [
            *("--prefill", "2", "--decode", "1"),
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


def test_a_hung_flip_is_killed_after_the_start_timeout_and_leaves(server: LiveServer) -> None:
    assert _health(server) == (200, "ok", None)
    static = {p: complete(server, p)[0] for p in PROMPTS}  # 2P+1D, before any change
    pid = server.instance_pids()["prefill-1"]
    load = SteadyLoad(server, PROMPTS, num_streams=2)
    with load.running():
        asked_s = time.monotonic()
        response = scale(server, "role_switch", "prefill-1", switch_hang_s=HANG_S)
        assert response.status_code == 200, response.text
        wait_until(lambda: rows(server)["prefill-1"]["state"] == "flipping", "the flip", 30)
        # It switches, hung: alive in /proc, heartbeating (not failed as silent), not served.
        assert _health(server) == (200, "degraded", "prefill-1 is switching roles")
        row = rows(server)["prefill-1"]
        assert not row["alive"] and row["linked"] == [] and is_running(pid)
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 2, "the load goes on during the flip")
        wait_until(lambda: "prefill-1" not in rows(server), "the hung flip to end", 30)
        ended_s = time.monotonic() - asked_s
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 2, "the load goes on after")
    assert START_TIMEOUT_S < ended_s < HANG_S
    assert not is_running(pid)
    assert not load.errors
    for prompt, text in load.done:
        assert text == static[prompt], prompt

    events = [(e["instance_id"], e["event"]) for e in scaling(server)["events"]]
    assert events == [("prefill-1", "drain"), ("prefill-1", "flip"), ("prefill-1", "flip_failed")]
    failed = scaling(server)["events"][-1]["detail"]
    assert failed == f"no answer to its switch to decode within {START_TIMEOUT_S:g} s"
    assert "instance prefill-1: no answer to its role switch (to decode) within" in server.stderr()
    assert "scaling: instance prefill-1 flip_failed" in server.stderr()

    # Out of the pool and the controller: healthy, no link to it, its gauges gone, counted.
    assert _health(server) == (200, "ok", None)
    left = rows(server)
    assert sorted(left) == ["decode-0", "prefill-0"]
    assert left["prefill-0"]["linked"] == ["decode-0"] and left["decode-0"]["linked"] == [
        "prefill-0"
    ]
    assert set(server.instance_pids()) == {"prefill-0", "decode-0"}
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert value(text, "hyperflexis:instances", role="prefill") == 1
    assert value(text, "hyperflexis:instances", role="decode") == 1
    assert not has(text, "hyperflexis:instance_up", engine="prefill-1")
    assert value(text, "hyperflexis:instance_failures_total", engine="prefill-1") == 1
    # Out of the lifecycle: decode-0 is the last planned decode instance (the hung one no longer
    # counts as joining that pool), so it may not flip.
    refused = scale(server, "role_switch", "decode-0")
    assert refused.status_code == 400 and "minimum" in refused.json()["error"]["message"]

    for prompt in PROMPTS:
        assert complete(server, prompt)[0] == static[prompt]
    idle = wait_idle(server)  # every KV block free on every instance
    assert sorted(str(r["instance_id"]) for r in idle) == ["decode-0", "prefill-0"]
