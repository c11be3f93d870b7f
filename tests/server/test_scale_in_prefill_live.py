"""`serve --scaler` live, P/D: scaling in a prefill instance under a steady load of streams loses
no request and changes no output (temperature 0, against the static run before it): requests
whose KV it still holds under a lease are pulled before it stops or recomputed, none ends
without output; every KV block is free afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.live import LiveServer, start_server, stop_server, wait_idle, wait_until
from tests.server.scaling_load import SteadyLoad, complete, rows, scale

PROMPTS = [f"the prefill leaving test {i} says" for i in range(6)]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    live = start_server(
        [
            *("--prefill", "2", "--decode", "1"),
            *("--model", str(server_model_dir), "--profile", str(fixed_profile)),
            *("--api-key", "sk-pin", "--scaler", "static"),
            *("--min-instances", "1", "--max-instances", "2", "--control-interval", "0.2"),
            *("--dispatch", "round-robin", "--drain-deadline-s", "0"),
        ],
        tmp_path_factory.mktemp("prefill-scale-in-server"),
    )
    yield live
    stop_server(live.process)


def test_a_prefill_instance_scaled_in_under_load_loses_nothing(server: LiveServer) -> None:
    static = {p: complete(server, p)[0] for p in PROMPTS}
    load = SteadyLoad(server, PROMPTS, num_streams=6)
    with load.running():
        wait_until(lambda: len(load.done) >= 6, "the load runs", 60)
        assert scale(server, "scale_in", "prefill-0", drain_deadline_s=0).status_code == 200
        wait_until(lambda: "prefill-0" not in rows(server), "prefill-0 stopped", 60)
        num_done = len(load.done)
        wait_until(lambda: len(load.done) >= num_done + 6, "the load goes on after", 60)
    assert not load.errors
    for prompt, text in load.done:
        assert text == static[prompt], prompt
    left = wait_idle(server)  # every KV block free
    assert sorted(str(r["instance_id"]) for r in left) == ["decode-0", "prefill-1"]
