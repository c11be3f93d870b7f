"""Live P/D (DESIGN.md §10): `hyperflexis serve --prefill 1 --decode 1` on real instance processes
against a collocated server of the same model, through the official `openai` client.

The client sees one ordinary stream: the first token from P, the rest from D, with the text,
usage and finish reasons of a collocated run, greedy and seeded, streaming and not, over the
`shm` and `torch-dist` transports. Every test ends with every KV block free on every instance.
Faults end in a result: a transport whose pulls fail gives the same tokens by recompute; a client
gone in prefill, transfer or decode frees both sides; a decode instance that never confirms
leaves P to free the blocks when the lease runs out. Each server is shared by the module's tests
and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.live import (
    LiveServer,
    read_until,
    send_raw,
    start_server,
    stop_server,
    wait_idle,
    wait_until,
)

COMPLETIONS = "/v1/completions"
FAULTY_TRANSPORT = "faulty"  # pd-engine's transport whose pulls fail (transfer/faulty.py)
LEASE_S = 3.0  # short, so the never-confirming test waits seconds, not the default 30
PROMPTS = [
    "The children ran along the beach",
    "Every morning the fishermen",
    "A short history of the lighthouse keeper's",
]


def _serve(tmp: Path, model: Path, profile: Path, *args: str) -> LiveServer:
    common = ["--model", str(model), "--profile", str(profile), "--kv-lease-s", str(LEASE_S)]
    common += ["--instance-timeout-s", "600"]  # frozen() stops instances: not a fault here
    return start_server([*common, *args], tmp)


@contextlib.contextmanager
def _server(
    factory: pytest.TempPathFactory, model: Path, profile: Path, *args: str
) -> Iterator[LiveServer]:
    live = _serve(factory.mktemp("pd-server"), model, profile, *args)
    try:
        yield live
    finally:
        stop_server(live.process)


@pytest.fixture(scope="module")
def collocated(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    with _server(tmp_path_factory, server_model_dir, fixed_profile, "--instances", "1") as live:
        yield live


@pytest.fixture(scope="module", params=["shm", "torch-dist"])
def pd(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    server_model_dir: Path,
    fixed_profile: Path,
) -> Iterator[LiveServer]:
    args = ("--prefill", "1", "--decode", "1", "--kv-transport", request.param)
    with _server(tmp_path_factory, server_model_dir, fixed_profile, *args) as live:
        yield live


def _complete(server: LiveServer, prompt: str, stream: bool, **params: Any) -> dict[str, Any]:
    """Text, finish reason and usage of one completion, streamed or not."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": 24, **params}
    model = client.models.list().data[0].id
    if not stream:
        done = client.completions.create(model=model, **body)
        usage = done.usage
        assert usage is not None
        (choice,) = done.choices
        return {
            "text": choice.text,
            "tokens": None if choice.logprobs is None else choice.logprobs.tokens,
            "finish_reason": choice.finish_reason,
            "usage": (usage.prompt_tokens, usage.completion_tokens),
        }
    text, finish, usage_seen, tokens = "", None, None, None
    chunks = client.completions.create(
        model=model, stream=True, stream_options={"include_usage": True}, **body
    )
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
            if choice.logprobs is not None and choice.logprobs.tokens is not None:
                tokens = (tokens or []) + choice.logprobs.tokens
        if chunk.usage is not None:
            usage_seen = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return {"text": text, "tokens": tokens, "finish_reason": finish, "usage": usage_seen}


CASES = [  # with logprobs=1 the responses list every token: equal token for token
    pytest.param({"temperature": 0.0, "logprobs": 1}, id="greedy"),
    pytest.param({"temperature": 0.9, "seed": 7, "logprobs": 1}, id="seeded"),
    pytest.param({"temperature": 0.0, "stop": [" the"]}, id="greedy-stop"),
    pytest.param({"temperature": 0.0, "max_tokens": 1}, id="one-token"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("params", CASES)
def test_pd_output_equals_collocated_output(
    pd: LiveServer, collocated: LiveServer, params: dict[str, Any], stream: bool
) -> None:
    for prompt in PROMPTS:
        want = _complete(collocated, prompt, stream, **params)
        got = _complete(pd, prompt, stream, **params)
        if "logprobs" in params:
            assert want["tokens"] and len(want["tokens"]) == want["usage"][1]
        assert got == want, prompt
        wait_idle(pd)
    wait_idle(collocated)


def test_instances_show_roles_and_links_and_transfers_are_measured(pd: LiveServer) -> None:
    _complete(pd, PROMPTS[0], False, temperature=0.0)
    rows = {r["instance_id"]: r for r in wait_idle(pd)}
    assert rows["prefill-0"]["role"] == "prefill" and rows["prefill-0"]["linked"] == ["decode-0"]
    assert rows["decode-0"]["role"] == "decode" and rows["decode-0"]["linked"] == ["prefill-0"]
    assert pd.metric("hyperflexis:instances", role="prefill") == 1
    assert pd.metric("hyperflexis:instances", role="decode") == 1
    assert pd.metric("hyperflexis:kv_transfer_seconds_count") >= 1
    assert pd.metric("hyperflexis:kv_transfer_bytes_sum") > 0
    assert pd.metric("hyperflexis:kv_handoff_failures_total") == 0


def _free(server: LiveServer, instance_id: str) -> bool:
    """Whether every KV block of the instance is free."""
    row = {r["instance_id"]: r for r in server.instances()}[instance_id]
    return row["num_free_blocks"] == row["num_blocks"]


LONG = {"prompt": "Every morning the fishermen", "max_tokens": 1500, "ignore_eos": True}


def test_disconnect_during_prefill_frees_both_sides(pd: LiveServer) -> None:
    wait_idle(pd)
    with pd.frozen():  # P cannot start it: the request is still in prefill when the client goes
        with contextlib.closing(send_raw(pd, COMPLETIONS, LONG)):
            wait_until(lambda: pd.stats()["num_open_requests"] == 1, "the request dispatched")
        wait_until(lambda: pd.stats()["num_open_requests"] == 0, "the server to drop it")
    wait_idle(pd)


def test_disconnect_during_transfer_frees_both_sides(pd: LiveServer) -> None:
    wait_idle(pd)
    with pd.frozen(["decode-0"]):  # D holds the hand-off unread: the KV stays leased on P
        with contextlib.closing(send_raw(pd, COMPLETIONS, {**LONG, "stream": True})) as sock:
            read_until(sock, b"data: {")  # the first token, from P
            held = {r["instance_id"]: r for r in pd.instances()}["prefill-0"]
            assert held["num_free_blocks"] < held["num_blocks"]  # pinned under its lease
        wait_until(lambda: pd.stats()["num_open_requests"] == 0, "the server to drop it")
        wait_until(lambda: _free(pd, "prefill-0"), "P to free at the release", LEASE_S - 1)
    wait_idle(pd)


def test_disconnect_during_decode_frees_both_sides(pd: LiveServer) -> None:
    wait_idle(pd)
    with contextlib.closing(send_raw(pd, COMPLETIONS, {**LONG, "stream": True})) as sock:
        read_until(sock, b"data: {")
        wait_until(
            lambda: {r["instance_id"]: r for r in pd.instances()}["decode-0"]["num_running"] == 1,
            "D decoding it",
        )
        with pd.frozen():
            sock.close()
            wait_until(lambda: pd.stats()["num_open_requests"] == 0, "the server to drop it")
    wait_idle(pd)


def test_a_decode_instance_that_never_confirms_leaves_p_to_free_at_lease_expiry(
    pd: LiveServer,
) -> None:
    wait_idle(pd)
    body = {**LONG, "max_tokens": 8, "stream": True}
    with contextlib.ExitStack() as stack:
        # Frozen before the request is sent: D never reads the hand-off while the lease runs
        # (frozen after, D could pull and finish all 8 tokens first on a loaded machine).
        with pd.frozen(["decode-0"]):
            sock = stack.enter_context(contextlib.closing(send_raw(pd, COMPLETIONS, body)))
            read_until(sock, b"data: {")  # the first token, from P
            wait_until(lambda: _free(pd, "prefill-0"), "P to free at lease expiry", LEASE_S + 20)
            assert pd.stats()["num_open_requests"] == 1  # the request itself lives on
        read_until(sock, b"data: [DONE]")  # D, thawed, finishes it (pulled or recomputed)
    wait_idle(pd)


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    args = ("--prefill", "1", "--decode", "1", "--kv-transport", FAULTY_TRANSPORT)
    with _server(tmp_path_factory, server_model_dir, fixed_profile, *args) as live:
        yield live


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_failed_transfers_give_the_same_tokens_by_recompute(
    faulty: LiveServer, collocated: LiveServer, stream: bool
) -> None:
    failures = faulty.metric("hyperflexis:kv_handoff_failures_total")
    for prompt in PROMPTS:
        for params in ({"temperature": 0.0, "logprobs": 1}, {"temperature": 0.9, "seed": 3}):
            assert _complete(faulty, prompt, stream, **params) == _complete(
                collocated, prompt, stream, **params
            )
            wait_idle(faulty)
    assert faulty.metric("hyperflexis:kv_handoff_failures_total") == failures + 2 * len(PROMPTS)
    assert faulty.metric("hyperflexis:kv_handoff_recomputes_total") >= 2 * len(PROMPTS)


@pytest.fixture(scope="module")
def two_prefills(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    args = ("--prefill", "2", "--decode", "1", "--links", "all")
    with _server(tmp_path_factory, server_model_dir, fixed_profile, *args) as live:
        yield live


def test_a_prefill_instance_dying_before_the_first_token_sends_the_request_again(
    two_prefills: LiveServer, collocated: LiveServer
) -> None:
    server = two_prefills
    want = _complete(collocated, PROMPTS[1], False, temperature=0.0)
    before = {r["instance_id"]: r["num_dispatched"] for r in server.instances()}
    pids = server.instance_pids()
    for pid in pids.values():  # no engine moves: the request waits on its prefill instance
        os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_complete, server, PROMPTS[1], False, temperature=0.0)
            wait_until(lambda: server.stats()["num_open_requests"] == 1, "it dispatched")
            after = {r["instance_id"]: r["num_dispatched"] for r in server.instances()}
            (chosen,) = [i for i in after if after[i] > before[i]]
            assert chosen.startswith("prefill-")
            os.kill(pids[chosen], signal.SIGKILL)
            wait_until(
                lambda: not {r["instance_id"]: r for r in server.instances()}[chosen]["alive"],
                "the server to see it die",
            )
            for instance_id, pid in pids.items():
                if instance_id != chosen:
                    os.kill(pid, signal.SIGCONT)
            assert pending.result(timeout=60) == want  # from the start, on the other one
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    wait_idle(server)
    assert server.metric("hyperflexis:instances", role="prefill") == 1
