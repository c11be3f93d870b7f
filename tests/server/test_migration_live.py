"""Request migration live (DESIGN.md §10.3), collocated `serve --scaler`: a stream on an instance
that is scaled in with a drain deadline of 0 moves, KV and all, to the other instance over the KV
transport (collocated instances of a scaling server register their pools), and the client's
stream goes on with no gap and no duplicate: its text is the unmigrated run's, token for token.

The source instance is stopped (SIGSTOP) as soon as the stream's first chunk arrives and the
scale-in is scripted while it is stopped, so the request is mid-stream when it moves whatever the
machine's speed; every wait is bounded and every KV block is free afterwards."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.live import LiveServer, start_server, stop_server, wait_idle, wait_until
from tests.server.scaling_load import (
    SteadyLoad,
    body,
    complete,
    rows,
    scale,
    scaling,
    stream_text,
)

PROMPT = "the migrating request says"
LONG = {"max_tokens": 256, "ignore_eos": True}  # long enough to be mid-stream when it moves


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    live = start_server(
        [
            *("--instances", "2", "--model", str(server_model_dir)),
            *("--profile", str(fixed_profile), "--api-key", "sk-move"),
            *("--scaler", "static", "--min-instances", "1", "--max-instances", "2"),
            *("--control-interval", "0.2", "--dispatch", "round-robin"),
            *("--drain-deadline-s", "60", "--instance-timeout-s", "600"),  # SIGSTOP: no fault
        ],
        tmp_path_factory.mktemp("migration-server"),
    )
    yield live
    stop_server(live.process)


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_a_migrated_stream_equals_an_unmigrated_one(server: LiveServer) -> None:
    want, _ = complete(server, PROMPT, **LONG)
    pids = server.instance_pids()
    request = body(PROMPT, stream=True, **LONG)
    with (
        httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client,
        client.stream("POST", "/v1/completions", json=request) as response,
    ):
        source = response.headers["x-hyperflexis-instance"]
        lines = response.iter_lines()
        head = [next(line for line in lines if line.startswith("data: "))]
        os.kill(pids[source], signal.SIGSTOP)  # mid-stream: it cannot finish meanwhile
        try:
            wait_until(lambda: _stopped(pids[source]), f"{source} stopped")
            moved = scale(server, "scale_in", source, drain_deadline_s=0)
            assert moved.status_code == 200, moved.text
        finally:
            os.kill(pids[source], signal.SIGCONT)
        text = stream_text(response, iter(head + list(lines)))
    assert text == want
    assert scaling(server)["num_migrations"] == 1 == server.metric("hyperflexis:migrations_total")
    wait_until(lambda: source not in rows(server), f"{source} stopped once drained")
    assert server.metric("hyperflexis:kv_transfer_bytes_sum") > 0  # pulled, not recomputed
    assert server.metric("hyperflexis:kv_handoff_failures_total") == 0
    (left,) = wait_idle(server)  # every KV block free
    assert left["instance_id"] != source
    assert complete(server, PROMPT, **LONG) == (want, left["instance_id"])


def test_a_scale_in_under_load_with_no_deadline_loses_nothing_and_changes_no_output(
    server: LiveServer,
) -> None:
    """After the first test one instance is left: start another, then scale the first in with
    a deadline of 0 while a few streams run: whatever is on it moves at once (decoding: with its
    KV; not yet streamed: dispatched again), and every output is unchanged."""
    prompts = [f"the migration load {i} says" for i in range(4)]
    static = {p: complete(server, p)[0] for p in prompts}
    (old,) = rows(server)  # its id
    assert scale(server, "scale_out", "instance-2").status_code == 200
    wait_until(lambda: rows(server)["instance-2"]["state"] == "active", "instance-2 ready", 120)
    load = SteadyLoad(server, prompts, num_streams=4)
    with load.running():
        wait_until(lambda: len(load.done) >= 4, "the load runs", 60)
        assert scale(server, "scale_in", old, drain_deadline_s=0).status_code == 200
        wait_until(lambda: old not in rows(server), f"{old} stopped once drained", 60)
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 4, "the load goes on after", 60)
    assert not load.errors
    for prompt, text in load.done:
        assert text == static[prompt], prompt
    (left,) = wait_idle(server)  # every KV block free
    assert left["instance_id"] == "instance-2"
