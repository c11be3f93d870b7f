"""The OpenAI-compatible API against one live `hyperflexis serve --instances 2` (module-scoped):
the official `openai` client (sync and async, streaming and not, completions and chat), every
kind of bad input, API keys, client disconnects, both instances in use, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from hyperflexis.bench.server_info import correction_factor, instance_rows
from hyperflexis.perf.online import FIT_MOMENTS
from tests.server.live import (
    LiveServer,
    read_until,
    send_raw,
    start_server,
    stop_server,
    wait_idle,
    wait_until,
)
from tests.server.scrape import has, value

API_KEY = "sk-test"
BATCH_KEY = "sk-batch"  # may ask for no more than the batch class
ADMIN_KEY = "sk-admin"  # may ask for any class, "instant" included
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_REQUEST_BYTES = 100_000

SLO_CONFIG = f"""
default = "standard"

[classes.instant]  # a TTFT nothing can meet: admission control must turn it away
ttft_ms = 0.001
tpot_ms = 500
priority = 0
late = "reject"

[classes.interactive]
ttft_ms = 2000
tpot_ms = 500
priority = 0

[classes.standard]
ttft_ms = 5000
tpot_ms = 1000
priority = 1

[classes.batch]
ttft_ms = 30000
tpot_ms = 3000
priority = 2

[api_keys]
{BATCH_KEY} = "batch"
{ADMIN_KEY} = "instant"
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("api-server")
    slo_path = tmp / "slo.toml"
    slo_path.write_text(SLO_CONFIG)
    live = start_server(
        [
            "--instances",
            "2",
            "--model",
            str(server_model_dir),
            "--profile",
            str(fixed_profile),
            "--slo-classes",
            str(slo_path),
            "--api-key",
            API_KEY,
            "--instance-timeout-s",
            "600",  # frozen() stops instances: they must not be failed meanwhile
            "--admission-control",
            "--max-request-bytes",
            str(MAX_REQUEST_BYTES),
            "--price-per-hour",
            "3.6",  # one cent per instance-second
        ],
        tmp,
    )
    yield live
    stop_server(live.process)


@pytest.fixture(scope="module")
def model_id(server: LiveServer) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    (model,) = client.models.list().data
    return model.id


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _post(server: LiveServer, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(
        f"{server.url}{path}",
        content=content,
        headers={**AUTH, "content-type": "application/json", **(headers or {})},
        timeout=60,
    )


def _wait_idle(server: LiveServer, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    return wait_idle(server, timeout_s)


# -- the openai client ------------------------------------------------------------------------


def test_models_and_health(server: LiveServer, model_id: str, server_model_dir: Path) -> None:
    assert model_id == server_model_dir.name
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert (health["status"], health["num_instances"], health["num_configured"]) == ("ok", 2, 2)
    assert [row["state"] for row in health["instances"]] == ["ready", "ready"]


def test_sync_completion_and_stream_agree(server: LiveServer, model_id: str) -> None:
    client = _client(server)
    kwargs: dict[str, Any] = {
        "model": model_id,
        "prompt": "The little town by the sea",
        "max_tokens": 12,
        "temperature": 0,
    }
    full = client.completions.create(**kwargs)
    choice = full.choices[0]
    assert full.object == "text_completion"
    assert choice.finish_reason in ("stop", "length")
    usage = full.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text  # greedy: same text on either instance, streamed or not
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_string_cuts_the_text(server: LiveServer, model_id: str) -> None:
    client = _client(server)
    kwargs: dict[str, Any] = {"model": model_id, "prompt": "Once upon a time", "temperature": 0}
    text = client.completions.create(**kwargs, max_tokens=16).choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"unlucky greedy text {text!r}"
    cut = client.completions.create(**kwargs, max_tokens=16, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.index(stop)]


def test_async_chat_streaming_and_not(server: LiveServer, model_id: str) -> None:
    async def run() -> tuple[Any, list[Any]]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        messages: list[Any] = [{"role": "user", "content": "Tell me about the library."}]
        kwargs: dict[str, Any] = {
            "model": model_id,
            "messages": messages,
            "max_tokens": 10,
            "temperature": 0,
        }
        full, stream = await asyncio.gather(
            client.chat.completions.create(**kwargs),
            client.chat.completions.create(**kwargs, stream=True),
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        return full, chunks

    full, chunks = asyncio.run(run())
    assert full.object == "chat.completion"
    message = full.choices[0].message
    assert message.role == "assistant"
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert full.usage is not None and full.usage.completion_tokens <= 10


def test_sync_chat_stream_with_usage(server: LiveServer, model_id: str) -> None:
    client = _client(server)
    chunks = list(
        client.chat.completions.create(
            model=model_id,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            seed=7,
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 4
    assert all(c.object == "chat.completion.chunk" for c in chunks)


# -- bad input --------------------------------------------------------------------------------

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
BAD_REQUESTS = [
    (COMPLETIONS, b"{not json", {}, None),
    (COMPLETIONS, [1, 2], {}, None),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": "ten"}, {}, "max_tokens"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, {}, "max_tokens"),
    (COMPLETIONS, {"prompt": "hi", "temperature": -1}, {}, "temperature"),
    (COMPLETIONS, {"prompt": "hi", "top_p": 2}, {}, "top_p"),
    (COMPLETIONS, {"prompt": "hi", "seed": "x"}, {}, "seed"),
    (COMPLETIONS, {"prompt": "hi", "stop": 5}, {}, "stop"),
    (COMPLETIONS, {"prompt": "hi", "n": 0}, {}, "n"),
    (COMPLETIONS, {"prompt": "hi", "tools": []}, {}, "tools"),
    (COMPLETIONS, {"prompt": "hi", "stream": "yes"}, {}, "stream"),
    (COMPLETIONS, {"prompt": 42}, {}, "prompt"),
    (COMPLETIONS, {"prompt": ["a", ""]}, {}, "prompt"),
    (COMPLETIONS, {"prompt": [5, 10**9]}, {}, "prompt"),
    (COMPLETIONS, {"prompt": "hi", "slo_class": "platinum"}, {}, "slo_class"),
    (COMPLETIONS, {"prompt": "hi", "priority": "high"}, {}, "priority"),
    (COMPLETIONS, {"prompt": "hi", "ttft_ms": -5}, {}, "ttft_ms"),
    (COMPLETIONS, {"prompt": "hi"}, {"x-slo-tpot-ms": "fast"}, "x-slo-tpot-ms"),
    (COMPLETIONS, {"prompt": "hi"}, {"x-priority": "1.5"}, "x-priority"),
    (COMPLETIONS, {"prompt": "hi", "priority": -1}, {}, "priority"),
    (COMPLETIONS, {"prompt": "hi"}, {"x-priority": "3"}, "priority"),  # above every class
    (COMPLETIONS, {"prompt": "hi", "tpot_ms": 1e12}, {}, "tpot_ms"),
    (COMPLETIONS, {"prompt": "hi"}, {"x-slo-ttft-ms": "0"}, "x-slo-ttft-ms"),
    (CHAT, {"max_tokens": 4}, {}, "messages"),
    (CHAT, {"messages": [{"content": "hi"}]}, {}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, {}, "messages"),
    (
        CHAT,
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
        },
        {},
        "response_format",
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "param"), BAD_REQUESTS)
def test_bad_request_is_400_with_openai_error(
    server: LiveServer, path: str, body: Any, headers: dict[str, str], param: str | None
) -> None:
    response = _post(server, path, body, headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_prompt_too_long_names_the_token_counts(server: LiveServer) -> None:
    max_len = 2048  # the tiny model's context
    response = _post(server, COMPLETIONS, {"prompt": [5] * (max_len + 10)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert str(max_len + 10) in error["message"] and str(max_len) in error["message"]

    response = _post(server, COMPLETIONS, {"prompt": [5] * 100, "max_tokens": max_len})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens"
    assert str(100 + max_len) in error["message"]


def test_unknown_model_is_404(server: LiveServer) -> None:
    response = _post(server, COMPLETIONS, {"model": "gpt-17", "prompt": "hi"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    response = httpx.get(f"{server.url}/v1/nowhere", timeout=10)
    assert response.status_code == 404
    assert "error" in response.json()


def test_keys_are_checked_and_clamp_the_class(server: LiveServer, model_id: str) -> None:
    body = {"prompt": "hi", "max_tokens": 2}
    missing = httpx.post(f"{server.url}{COMPLETIONS}", json=body, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    wrong = _post(server, COMPLETIONS, body, {"Authorization": "Bearer sk-nope"})
    assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-nope", max_retries=0).models.list()

    asks = {**body, "slo_class": "interactive", "priority": 0}
    clamped = _post(server, COMPLETIONS, asks, {"Authorization": f"Bearer {BATCH_KEY}"})
    assert clamped.status_code == 200
    assert clamped.headers["x-slo-class"] == "batch"
    unmapped = _post(server, COMPLETIONS, asks)  # the server key: bound to the default class
    assert unmapped.headers["x-slo-class"] == "standard"
    tighter = _post(server, COMPLETIONS, {**body, "ttft_ms": 0.001})
    assert tighter.status_code == 200  # clamped to the standard class's 5 s, so feasible
    header_asks = _post(server, COMPLETIONS, body, {"x-slo-class": "batch"})
    assert header_asks.headers["x-slo-class"] == "batch"


def test_infeasible_slo_is_503_with_retry_after(server: LiveServer) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = _post(server, COMPLETIONS, {"prompt": "hi", "slo_class": "instant"}, admin)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"


def test_server_still_serves_after_bad_input(server: LiveServer, model_id: str) -> None:
    for path, body, headers, _ in BAD_REQUESTS[:5]:
        _post(server, path, body, headers)
    response = _post(server, COMPLETIONS, {"model": model_id, "prompt": "hi", "max_tokens": 3})
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] <= 3


# -- disconnects, both instances, metrics ------------------------------------------------------

LONG = {"prompt": "Every morning the fishermen", "max_tokens": 1500, "ignore_eos": True}
ABORTED = {"slo_class": "standard", "cause": "aborted"}


def _send_raw(server: LiveServer, body: dict[str, Any]) -> socket.socket:
    return send_raw(server, COMPLETIONS, body)


def _read_until(sock: socket.socket, marker: bytes) -> None:
    read_until(sock, marker)


def _disconnect_while_frozen(server: LiveServer, sock: socket.socket) -> None:
    """With every engine stopped, so the request cannot finish by itself: close the client's
    connection and wait for the server to drop the request; then let the engines go on. The
    engines run free only from the request's first token to the freeze, a few milliseconds in
    which its other 1,499 tokens cannot all be computed (that would fail loudly below)."""
    with server.frozen():
        assert server.stats()["num_open_requests"] == 1, "the request ended before the test"
        held = [r for r in server.instances() if r["num_free_blocks"] < r["num_blocks"]]
        assert held, "the running request holds KV blocks"
        sock.close()
        wait_until(lambda: server.stats()["num_open_requests"] == 0, "the server to drop it")


def test_stream_disconnect_aborts_and_frees_kv(server: LiveServer) -> None:
    _wait_idle(server)
    num_aborted = server.metric("hyperflexis:requests_missed_total", **ABORTED)
    with contextlib.closing(_send_raw(server, {**LONG, "stream": True})) as sock:
        _read_until(sock, b"data: {")  # its first token: it runs on an instance
        _disconnect_while_frozen(server, sock)
    assert server.metric("hyperflexis:requests_missed_total", **ABORTED) == num_aborted + 1
    _wait_idle(server)  # the instance freed its blocks


def test_non_streaming_disconnect_aborts_and_frees_kv(server: LiveServer) -> None:
    _wait_idle(server)
    num_aborted = server.metric("hyperflexis:requests_missed_total", **ABORTED)
    with contextlib.closing(_send_raw(server, LONG)) as sock:

        def has_first_token() -> bool:
            stats = server.stats()
            return stats["num_open_requests"] == 1 and stats["num_queued"] == 0

        wait_until(has_first_token, "its first token")  # it runs; its body is not complete
        _disconnect_while_frozen(server, sock)
    assert server.metric("hyperflexis:requests_missed_total", **ABORTED) == num_aborted + 1
    _wait_idle(server)


def test_both_instances_receive_traffic(server: LiveServer) -> None:
    before = {r["instance_id"]: r["num_dispatched"] for r in server.instances()}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as client:
            body = {"prompt": "The children ran along the beach", "max_tokens": 8}
            responses = await asyncio.gather(
                *(client.post(COMPLETIONS, json=body) for _ in range(6))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 6
    after = {r["instance_id"]: r["num_dispatched"] for r in server.instances()}
    assert len(after) == 2
    assert all(after[i] > before[i] for i in after), (before, after)


def test_metrics_and_overhead(server: LiveServer) -> None:
    num_before = server.stats()["server_overhead_ms"]["count"]
    for _ in range(3):
        start = time.perf_counter()
        response = _post(server, COMPLETIONS, {"prompt": "hi", "max_tokens": 2})
        elapsed_ms = 1000 * (time.perf_counter() - start)
        # The server's own time is measured, and it is a part of the request's time as the
        # client saw it (how small it is, is measured by benchmarks/serve_slo.py).
        assert 0 < float(response.headers["x-hyperflexis-server-overhead-ms"]) < elapsed_ms
        instances = {r["instance_id"] for r in server.instances()}
        assert response.headers["x-hyperflexis-instance"] in instances  # where it was sent
    metrics = httpx.get(f"{server.url}/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert value(text, "hyperflexis:time_to_first_token_seconds_count", slo_class="standard") > 0
    assert value(text, "hyperflexis:time_per_output_token_seconds_count", slo_class="standard") > 0
    assert value(text, "hyperflexis:requests_attained_total") > 0
    missed, rejected = "hyperflexis:requests_missed_total", "hyperflexis:requests_rejected_total"
    assert value(text, missed, slo_class="standard", cause="aborted") > 0
    assert value(text, rejected, slo_class="instant", reason="dispatch") > 0
    assert value(text, "hyperflexis:server_overhead_seconds_count") > 10
    for engine in ("instance-0", "instance-1"):
        assert value(text, "vllm:time_to_first_token_seconds_count", engine=engine) > 0
        assert value(text, "vllm:generation_tokens_total", engine=engine) > 0
        for name in ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting"):
            assert has(text, f"vllm:{name}", engine=engine), (name, engine)
        assert has(text, "vllm:num_preemptions_total", engine=engine)
    overhead = server.stats()["server_overhead_ms"]
    assert overhead["count"] == num_before + 3  # one sample per request that reached dispatch
    assert 0 < overhead["p50"] <= overhead["p90"] <= overhead["p99"]


def test_instance_seconds_and_cost_per_pool(server: LiveServer) -> None:
    seconds, usd = "hyperflexis:instance_seconds_total", "hyperflexis:cost_usd_total"

    def scrape() -> tuple[float, float, float, float]:
        sent = time.monotonic()
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return sent, time.monotonic(), value(text, seconds, role="mixed"), value(text, usd)

    sent_1, got_1, seconds_1, usd_1 = scrape()
    _post(server, COMPLETIONS, {"prompt": "hi", "max_tokens": 2})  # time passes, and a request
    sent_2, got_2, seconds_2, usd_2 = scrape()
    # Two mixed instances serve throughout: the counter moves by twice the time between the
    # two charges, which happened somewhere inside each scrape.
    assert 2 * (sent_2 - got_1) <= seconds_2 - seconds_1 <= 2 * (got_2 - sent_1)
    assert usd_2 == pytest.approx(seconds_2 * 3.6 / 3600)  # every pool's cost is the mixed one's
    assert usd_2 > usd_1
    assert server.metric(seconds, role="prefill") == server.metric(seconds, role="decode") == 0


def test_debug_instances_show_each_kind_of_steps_ratio_moments(server: LiveServer) -> None:
    def steps() -> dict[str, int]:
        rows = server.instances()
        return {
            k: sum(int(r["step_ratio_moments"].get(k, [0])[0]) for r in rows)
            for k in ("prefill", "decode")
        }

    before = steps()  # an instance that never stepped has reported none yet
    _post(server, COMPLETIONS, {"prompt": "hi", "max_tokens": 6, "ignore_eos": True})
    after = steps()  # the prompt's step, then one decode-only step per further token
    assert after["prefill"] >= before["prefill"] + 1
    assert after["decode"] >= before["decode"] + 4
    rows = instance_rows(server.url, API_KEY)  # what benchmarks read, the same rows
    assert {row["instance_id"] for row in rows} == {
        row["instance_id"] for row in server.instances()
    }
    assert correction_factor(server.url, API_KEY) is not None
    for row in rows:
        assert len(row["step_fit_moments"]) in (0, FIT_MOMENTS)
        for count, total, total_sq in row["step_ratio_moments"].values():
            assert total > 0 and total_sq > 0 if count else total == total_sq == 0


def test_debug_needs_the_key_and_shows_no_pids(server: LiveServer) -> None:
    for path in ("/debug/instances", "/debug/stats"):
        response = httpx.get(f"{server.url}{path}", timeout=10)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "invalid_api_key"
    rows = server.instances()  # with the key
    assert len(rows) == 2 and not [row for row in rows if "pid" in row]
    assert set(server.instance_pids()) == {row["instance_id"] for row in rows}
    assert {row["weight_source"] for row in rows} == {"disk"}  # and how each start went:
    assert all(set(row["start_phases_s"]) == {"startup_s", "weights_s", "warmup_s"} for row in rows)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10)  # open, as vLLM's
    assert metrics.status_code == 200 and "vllm:num_requests_running" in metrics.text


def test_a_body_over_the_limit_is_413_before_it_is_sent(server: LiveServer) -> None:
    """Only the headers go out, declaring a 1 GB body: the server answers without it."""
    url = urlsplit(server.url)
    head = (
        f"POST {COMPLETIONS} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10**9}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        error = json.loads(response.read())["error"]
    assert response.status == 413
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_too_large" and str(MAX_REQUEST_BYTES) in error["message"]


def test_instance_crash_mid_stream_continues_elsewhere(server: LiveServer) -> None:
    """An instance killed mid-stream: the stream goes on on the other instance and ends as a
    completion; /health is degraded until the instance is replaced (tests/server/reliability/
    covers faults in depth)."""
    wait_idle(server)
    with (
        httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client,
        client.stream("POST", COMPLETIONS, json={**LONG, "stream": True}) as response,
    ):
        events = (line for line in response.iter_lines() if line)
        assert next(events).startswith("data: {")
        (busy,) = [r for r in server.instances() if r["num_running"]]
        os.kill(server.instance_pids()[str(busy["instance_id"])], signal.SIGKILL)
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        rest = list(events)
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2].removeprefix("data: "))
    assert "error" not in last and last["choices"][0]["finish_reason"] == "length", last
    assert health["status"] in ("ok", "degraded")  # "ok" only if it was already replaced
    wait_until(
        lambda: httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok",
        "the instance to be replaced",
        timeout_s=60,
    )
    response = _post(server, COMPLETIONS, {"prompt": "still here", "max_tokens": 2})
    assert response.status_code == 200
