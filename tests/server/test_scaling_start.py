"""`serve --scaler` live: a new (scaled-out) instance that never finishes loading is killed after
`--start-timeout-s`, leaves the pool, the controller and the lifecycle, and is logged; /health
says "degraded" (200, with the reason) while it loads. Its load hangs for real: the checkpoint's
weights file is a FIFO while it starts, so opening it blocks until the process is killed.

The decision is scripted through `POST /debug/scale` (the `static` scaler decides nothing by
itself). Afterwards the lifecycle has room again: another scale-out, within `--max-instances
2`, starts and serves, and every KV block is free."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.live import (
    LiveServer,
    descendants,
    is_running,
    start_server,
    stop_server,
    wait_idle,
    wait_until,
)

API_KEY = "sk-start"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
START_TIMEOUT_S = 20.0  # long enough for a real start on a loaded machine (the second one)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, fixed_profile: Path
) -> Iterator[tuple[LiveServer, Path]]:
    from hyperflexis.engine.default_model import SEED, write_default_model

    model = tmp_path_factory.mktemp("start-model")  # its own copy: the test swaps its weights
    write_default_model(model, SEED)
    args = ["--instances", "1", "--model", str(model), "--profile", str(fixed_profile)]
    args += ["--api-key", API_KEY, "--scaler", "static", "--min-instances", "1"]
    args += ["--max-instances", "2", "--control-interval", "0.2"]
    args += ["--start-timeout-s", str(START_TIMEOUT_S)]
    live = start_server(args, tmp_path_factory.mktemp("start-server"))
    yield live, model
    stop_server(live.process)


def _scale_out(live: LiveServer, instance_id: str) -> None:
    body = {"kind": "scale_out", "instance_id": instance_id}
    response = httpx.post(f"{live.url}/debug/scale", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text


def _rows(live: LiveServer) -> dict[str, dict[str, Any]]:
    return {str(r["instance_id"]): r for r in live.instances()}


def _health(live: LiveServer) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{live.url}/health", timeout=10)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def _running(live: LiveServer) -> set[int]:
    return {pid for pid in descendants(live.process.pid) if is_running(pid)}


def test_a_new_instance_that_never_loads_is_stopped_and_leaves(
    served: tuple[LiveServer, Path],
) -> None:
    live, model = served
    code, body = _health(live)
    assert (code, body["status"], body["reason"]) == (200, "ok", None)
    processes = _running(live)
    weights = model / "model.safetensors"
    kept = weights.rename(model / "weights.kept")
    os.mkfifo(weights)  # no writer ever opens it: the new instance's load blocks in open()
    try:
        _scale_out(live, "instance-1")
        code, body = _health(live)
        assert (code, body["status"]) == (200, "degraded")
        assert body["reason"] == "instance-1 is loading (a new instance)"
        assert _rows(live)["instance-1"]["state"] == "starting"
        new_pids = _running(live) - processes
        wait_until(
            lambda: "instance-1" not in _rows(live),
            "the hung instance to be stopped",
            timeout_s=START_TIMEOUT_S + 30,
        )
    finally:
        weights.unlink()
        kept.rename(weights)
    events = httpx.get(f"{live.url}/debug/scaling", headers=AUTH, timeout=10).json()["events"]
    assert [(e["instance_id"], e["event"]) for e in events] == [
        ("instance-1", "scale_out"),
        ("instance-1", "start_failed"),
    ]
    assert f"not ready within {START_TIMEOUT_S:g} s" in events[-1]["detail"]
    assert "instance-1: a new instance did not start within" in live.stderr()
    assert _health(live)[1]["status"] == "ok" and _running(live) == processes
    assert new_pids and not any(is_running(pid) for pid in new_pids - processes)

    # It left the lifecycle: another scale-out fits under --max-instances 2, and serves.
    _scale_out(live, "instance-2")
    wait_until(
        lambda: _rows(live)["instance-2"]["state"] == "active",
        "instance-2 to start",
        timeout_s=START_TIMEOUT_S,
    )
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        served_by = set()
        for i in range(6):
            body = {"prompt": f"after the hung start {i}", "max_tokens": 4, "temperature": 0}
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            served_by.add(response.headers["x-hyperflexis-instance"])
    assert served_by <= {"instance-0", "instance-2"}
    assert sorted(r["instance_id"] for r in wait_idle(live)) == ["instance-0", "instance-2"]
