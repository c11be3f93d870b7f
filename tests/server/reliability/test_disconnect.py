"""The disconnect matrix: a client that goes away, streaming or not, while its prompt is being
prefilled (in small chunks over many steps) or while it decodes. Each time the server drops the
request, its instance frees its KV, and the server is quiescent. The instance is frozen at the
moment of the disconnect, so the request cannot finish first; the live P/D transfer stage joins
the matrix with live P/D."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.server.live import wait_until
from tests.server.reliability.quiet import Served, assert_quiescent, serve

STEP_TOKENS = 8  # prefill chunk per step: a long prompt takes hundreds of steps
PROMPT_TOKENS = 1800
ABORTED = {"cause": "aborted"}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("disconnect-server")
    args = ["--model", str(server_model_dir), "--profile", str(fixed_profile)]
    args += ["--max-num-batched-tokens", str(STEP_TOKENS), "--policy", "fcfs"]
    args += ["--instance-timeout-s", "600"]  # frozen on purpose below
    with serve(args, tmp, num_instances=1) as live:
        yield live


def _send_raw(served: Served, body: dict[str, Any]) -> socket.socket:
    url = urlsplit(served.url)
    assert url.hostname is not None and url.port is not None
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head.encode() + payload)
    return sock


def _running(served: Served) -> bool:
    return any(int(str(r["num_running"])) > 0 for r in served.live.instances())


def _in_prefill(served: Served) -> bool:
    return _running(served) and served.live.stats()["num_queued"] == 1


def _in_decode(served: Served) -> bool:
    stats = served.live.stats()
    return stats["num_open_requests"] == 1 and stats["num_queued"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_a_client_that_leaves_frees_everything(served: Served, stream: bool, stage: str) -> None:
    assert_quiescent(served)
    num_aborted = served.live.metric("hyperflexis:requests_missed_total", **ABORTED)
    prompt = [3 + i % 500 for i in range(PROMPT_TOKENS)]
    body = {"prompt": prompt, "max_tokens": 200, "ignore_eos": True, "stream": stream}
    with contextlib.closing(_send_raw(served, body)) as sock:
        wait_until(lambda: (_in_prefill if stage == "prefill" else _in_decode)(served), stage)
        with served.live.frozen():
            stats = served.live.stats()
            assert stats["num_open_requests"] == 1, "it ended before the test"
            assert (stats["num_queued"] == 1) == (stage == "prefill"), stats
            sock.close()
            wait_until(lambda: served.live.stats()["num_open_requests"] == 0, "the drop")
    after = served.live.metric("hyperflexis:requests_missed_total", **ABORTED)
    assert after == num_aborted + 1
    assert_quiescent(served)
