"""A live server under overload, then its shutdown. One server for the module: it profiles the
model itself (no cached profile in its tmp cache), which is also what a first `serve` does.

Overload, by construction rather than by measuring the machine: the instance is frozen (SIGSTOP)
while the whole burst arrives, one request after another, so every deadline has passed before it
takes a step (TTFT targets of 1 ms) and all the work is late at once. The two classes have the
SAME targets, only their priority differs, and the batch class arrives first: FCFS and EDF would
serve it first. HyperFlexis serves late work most important first, so every interactive request
gets its first token before (or in the same step as) every batch request, though each arrived
later: interactive TTFTs are all shorter.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.live import LiveServer, descendants, is_running, start_server, stop_server
from tests.server.scrape import value

SLO_CONFIG = """
default = "interactive"

[classes.interactive]
ttft_ms = 60000
tpot_ms = 10000
priority = 0

[classes.batch]
ttft_ms = 60000
tpot_ms = 10000
priority = 2
"""
CLASSES = ("interactive", "batch")
NUM_PER_CLASS = 12
PROMPT_TOKENS = 400
MAX_TOKENS = 2
STEP_TOKENS = 512  # a small step token budget: first tokens spread over many steps
UNMEETABLE_TTFT_MS = 1.0  # far less than the instance stays frozen after the last arrival
# The server's sender thread writes each command into the frozen instance's pipe as soon as it
# is queued; this is only a margin for it, on a loaded machine, before the instance thaws.
FLUSH_MARGIN_S = 0.5


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("overload-server")
    slo_path = tmp / "slo.toml"
    slo_path.write_text(SLO_CONFIG)
    live = start_server(
        [
            "--instances",
            "1",  # one instance: every request of the burst meets every other one's priority
            "--model",
            str(server_model_dir),
            "--slo-classes",
            str(slo_path),
            "--instance-timeout-s",
            "600",  # frozen() stops instances: they must not be failed meanwhile
            "--max-num-batched-tokens",
            str(STEP_TOKENS),
        ],
        tmp,
        env={"HYPERFLEXIS_CACHE_DIR": str(tmp / "cache")},
    )
    yield live
    stop_server(live.process)


TTFT_SUM = "hyperflexis:time_to_first_token_seconds_sum"
TTFT_COUNT = "hyperflexis:time_to_first_token_seconds_count"
ATTAINED = "hyperflexis:requests_attained_total"
MISSED = "hyperflexis:requests_missed_total"
SAMPLES = (TTFT_SUM, TTFT_COUNT, ATTAINED, MISSED)


def _samples(server: LiveServer) -> dict[str, dict[str, float]]:
    """Each of `SAMPLES` per class, from `/metrics` (misses: those that missed their TTFT)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    labels: dict[str, dict[str, str]] = {MISSED: {"cause": "ttft"}}
    return {
        name: {c: value(text, name, slo_class=c, **labels.get(name, {})) for c in CLASSES}
        for name in SAMPLES
    }


async def _frozen_burst(server: LiveServer, classes: list[str]) -> None:
    """Send one request per class name, in order, each once the last one is open at the
    server, while the instance is frozen; then let it serve them all."""
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=len(classes) + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

        async def num_open() -> int:
            stats = (await client.get("/debug/stats")).json()
            return int(stats["num_open_requests"])

        async def one(slo_class: str) -> int:
            body = {
                "prompt": [rng.randrange(3, 500) for _ in range(PROMPT_TOKENS)],
                "max_tokens": MAX_TOKENS,
                "ignore_eos": True,
                "slo_class": slo_class,
                "ttft_ms": UNMEETABLE_TTFT_MS,
            }
            return (await client.post("/v1/completions", json=body)).status_code

        tasks = []
        with server.frozen():
            for count, slo_class in enumerate(classes, 1):
                tasks.append(asyncio.create_task(one(slo_class)))
                deadline = time.monotonic() + 30
                while await num_open() < count:
                    assert time.monotonic() < deadline, f"request {count} never reached the server"
                    await asyncio.sleep(0.005)
            await asyncio.sleep(FLUSH_MARGIN_S)
        assert await asyncio.gather(*tasks) == [200] * len(classes)


def test_interactive_is_served_first_under_overload(server: LiveServer) -> None:
    before = _samples(server)
    asyncio.run(_frozen_burst(server, ["batch"] * NUM_PER_CLASS + ["interactive"] * NUM_PER_CLASS))
    after = _samples(server)
    gained = {s: {c: after[s][c] - before[s][c] for c in CLASSES} for s in SAMPLES}
    # Every request completed, and late: the targets could not be met.
    every_class = {c: NUM_PER_CLASS for c in CLASSES}
    assert gained[TTFT_COUNT] == every_class and gained[MISSED] == every_class, gained
    assert gained[ATTAINED] == {c: 0 for c in CLASSES}, gained
    # Priority decides who goes first, whatever the arrival order.
    mean_ttft_s = {c: gained[TTFT_SUM][c] / NUM_PER_CLASS for c in CLASSES}
    assert mean_ttft_s["interactive"] < mean_ttft_s["batch"], mean_ttft_s


def test_sigterm_stops_every_process(server: LiveServer) -> None:
    children = descendants(server.process.pid)
    instance_pids = set(server.instance_pids().values())
    assert instance_pids <= children and len(instance_pids) == 1
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0, server.stderr()
    deadline = time.monotonic() + 10
    while any(is_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if is_running(pid)]
