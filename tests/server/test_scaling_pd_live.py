"""`serve --scaler` live, P/D: under a steady load of concurrent streams, a scripted scale-out of
a prefill instance, a role flip in place (prefill -> decode: same process, same weights) and a
scale-in of a decode instance (its streams migrate, KV and all) lose no request and change no
output (temperature 0, against the static run before them); a new instance takes no traffic
before it is ready and linked; neither pool drops below its minimum; every KV block is free
afterwards.

The decisions are scripted through `POST /debug/scale`, applied through the scaler's own path
(`LiveScaler.apply`); the `static` scaler decides nothing by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.live import LiveServer, start_server, stop_server, wait_idle, wait_until
from tests.server.scaling_load import SteadyLoad, complete, rows, scale, scaling

PROMPTS = [f"the flipping test {i} says" for i in range(4)]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    live = start_server(
        [
            *("--prefill", "1", "--decode", "1"),
            *("--model", str(server_model_dir), "--profile", str(fixed_profile)),
            *("--api-key", "sk-flip", "--scaler", "static"),
            *("--min-instances", "1", "--max-instances", "2", "--control-interval", "0.2"),
            *("--peer-weights", "--dispatch", "round-robin", "--drain-deadline-s", "60"),
        ],
        tmp_path_factory.mktemp("pd-scaling-server"),
    )
    yield live
    stop_server(live.process)


def _events(server: LiveServer) -> list[tuple[str, str]]:
    return [(e["instance_id"], e["event"]) for e in scaling(server)["events"]]


def test_scale_out_flip_and_scale_in_under_load_lose_nothing(server: LiveServer) -> None:
    static = {p: complete(server, p)[0] for p in PROMPTS}  # 1P+1D, before any change
    load = SteadyLoad(server, PROMPTS)
    with load.running():
        wait_until(lambda: len(load.done) >= 3, "the load runs", 60)
        # Scale out a prefill instance: until it is ready it takes nothing and has no links.
        assert scale(server, "scale_out", "prefill-1", role="prefill").status_code == 200
        num_seen_starting = 0
        while (row := rows(server)["prefill-1"])["state"] == "starting":
            assert row["num_dispatched"] == 0 and not row["alive"] and row["linked"] == []
            num_seen_starting += 1
            time.sleep(0.02)
        assert num_seen_starting > 0
        row = rows(server)["prefill-1"]
        assert row["state"] == "active" and row["linked"] == ["decode-0"]
        assert row["weight_source"] == "peer"

        # Flip prefill-0 to decode in place (2P+1D -> 1P+2D): no new process.
        pid = server.instance_pids()["prefill-0"]
        assert scale(server, "role_switch", "prefill-0").status_code == 200
        wait_until(lambda: ("prefill-0", "flipped") in _events(server), "the flip", 60)
        flipped = rows(server)
        assert flipped["prefill-0"]["role"] == "decode"
        assert flipped["prefill-0"]["state"] == "active" and flipped["prefill-0"]["flip_s"] > 0
        assert flipped["prefill-1"]["linked"] == ["decode-0", "prefill-0"]
        assert server.instance_pids()["prefill-0"] == pid
        assert flipped["prefill-0"]["start_phases_s"]["switch_s"] >= 0

        # Scale in the first decode instance: its streams move to prefill-0 (now decode).
        assert scale(server, "scale_in", "decode-0", drain_deadline_s=0).status_code == 200
        wait_until(lambda: "decode-0" not in rows(server), "decode-0 stopped", 60)
        for kind, instance_id in (("scale_in", "prefill-1"), ("role_switch", "prefill-0")):
            refused = scale(server, kind, instance_id)  # the last of its role
            assert refused.status_code == 400 and "minimum" in refused.json()["error"]["message"]
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 4, "the load goes on after", 60)
    assert not load.errors
    assert len(load.done) >= 10
    for prompt, text in load.done:
        assert text == static[prompt], prompt
    left = wait_idle(server)  # every KV block free
    assert sorted(str(r["instance_id"]) for r in left) == ["prefill-0", "prefill-1"]
    assert _events(server) == [
        ("prefill-1", "scale_out"),
        ("prefill-1", "ready"),
        ("prefill-0", "drain"),
        ("prefill-0", "flip"),
        ("prefill-0", "flipped"),
        ("decode-0", "drain"),
        ("decode-0", "stop"),
    ]
    assert server.metric("hyperflexis:instances", role="decode") == 1
    assert "scaling: instance prefill-0 flipped" in server.stderr()
