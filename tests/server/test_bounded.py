"""Bounded work per request, in process (the HTTP app over a `ServingCore` with the stand-ins
of test_core): a body over the limit is 413 before it is all read, a text far over the context
is refused before it is all tokenised, a slow tokenisation does not hold up /health, an
internal error is a 500 in OpenAI's shape, and /metrics closes only when asked to. The live
server's side (flags, /debug and the key) is in test_api."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hyperflexis.core.slo import SLOClasses
from hyperflexis.server.access import Access
from hyperflexis.server.app import create_app
from hyperflexis.server.core import ServingCore
from hyperflexis.server.errors import APIError
from hyperflexis.server.limits import PREFIX_CHARS_PER_TOKEN
from hyperflexis.server.protocol import parse_completion
from tests.server.test_core import MAX_CONTEXT, FakeDispatcher, FakePool, FakeTokenizer

MAX_REQUEST_BYTES = 1000
WAIT_S = 10.0  # a bound on waiting for a thread, never a sleep


class GatedTokenizer(FakeTokenizer):
    """Blocks inside `encode` until the test opens the gate: a tokenisation that takes as long
    as the test wants, with no clock involved."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if text == "boom":
            raise RuntimeError("a bug in the tokenizer")
        if text.startswith("slow"):
            self.entered.set()
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return super().encode(text, add_special_tokens)


def _client(tokenizer: FakeTokenizer, access: Access | None = None) -> httpx.AsyncClient:
    return _app(tokenizer, access)[1]


def _app(
    tokenizer: FakeTokenizer, access: Access | None = None
) -> tuple[ServingCore, httpx.AsyncClient]:
    core = ServingCore(
        FakePool(),  # type: ignore[arg-type]
        FakeDispatcher(),  # type: ignore[arg-type]
        tokenizer,  # type: ignore[arg-type]
        access or Access(SLOClasses()),
        "tiny",
        max_request_bytes=MAX_REQUEST_BYTES,
    )
    transport = httpx.ASGITransport(create_app(core), raise_app_exceptions=False)
    return core, httpx.AsyncClient(transport=transport, base_url="http://test", timeout=WAIT_S)


def _assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_body_over_the_limit_is_413_without_reading_it_all() -> None:
    num_chunks_read = 0

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to trust
        nonlocal num_chunks_read
        for _ in range(100):
            num_chunks_read += 1
            yield b" " * 400

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with _client(FakeTokenizer()) as client:
            chunked = await client.post("/v1/completions", content=chunks())
            declared = await client.post(
                "/tokenize", content=b" " * (MAX_REQUEST_BYTES + 1)
            )  # Content-Length over the limit
            return chunked, declared

    chunked, declared = asyncio.run(run())
    for response in (chunked, declared):
        error = _assert_openai_error(response, 413)
        assert error["code"] == "request_too_large" and str(MAX_REQUEST_BYTES) in error["message"]
    assert num_chunks_read < 10  # refused at the limit, not after buffering the rest


def test_a_slow_tokenisation_does_not_hold_up_health_or_other_clients() -> None:
    tokenizer = GatedTokenizer()
    core, http = _app(tokenizer)

    async def run() -> None:
        async with http as client:
            slow = asyncio.create_task(
                client.post("/v1/completions", json={"prompt": "slow " * 20, "max_tokens": 1})
            )
            assert await asyncio.to_thread(tokenizer.entered.wait, WAIT_S)
            # The slow request is inside the tokenizer now, and stays there until the gate
            # opens: everything below is answered while it is.
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            other = await client.post("/tokenize", json={"prompt": "a quick one"})
            assert other.json()["tokens"] == [1, 5, 3]
            assert not slow.done()
            tokenizer.gate.set()
            # Then it is dispatched; the stand-in instances never answer, so stop it there.
            for _ in range(1000):
                if core.streams or slow.done():
                    break
                await asyncio.sleep(0.01)
            assert len(core.streams) == 1 and not slow.done()
            slow.cancel()

    asyncio.run(asyncio.wait_for(run(), WAIT_S * 3))


def test_an_internal_error_is_a_500_in_openai_shape() -> None:
    async def run() -> httpx.Response:
        async with _client(GatedTokenizer()) as client:
            return await client.post("/v1/completions", json={"prompt": "boom"})

    error = _assert_openai_error(asyncio.run(run()), 500)
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]
    assert "a bug in the tokenizer" not in error["message"]  # internals stay in the log


def test_metrics_are_open_unless_the_flag_closes_them() -> None:
    key = {"Authorization": "Bearer sk-test"}

    async def run(access: Access) -> list[int]:
        async with _client(FakeTokenizer(), access) as client:
            without = await client.get("/metrics")
            with_key = await client.get("/metrics", headers=key)
            debug = await client.get("/debug/stats")
            return [without.status_code, with_key.status_code, debug.status_code]

    classes = SLOClasses()
    assert asyncio.run(run(Access(classes, "sk-test"))) == [200, 200, 401]
    closed = Access(classes, "sk-test", metrics_require_key=True)
    assert asyncio.run(run(closed)) == [401, 200, 401]


class RecordingTokenizer(FakeTokenizer):
    def __init__(self) -> None:
        self.num_chars_encoded: list[int] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.num_chars_encoded.append(len(text))
        return super().encode(text, add_special_tokens)


def test_a_text_far_over_the_context_is_refused_from_a_prefix() -> None:
    tokenizer = RecordingTokenizer()
    core, _ = _app(tokenizer)
    huge = "a " * 100_000  # 100k tokens for the stand-in tokenizer; the context is 64
    with pytest.raises(APIError) as info:
        core.submit(parse_completion({"prompt": huge}, {}), None, 0.0)
    error = info.value
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "prompt")
    assert tokenizer.num_chars_encoded == [PREFIX_CHARS_PER_TOKEN * MAX_CONTEXT]
    # Long in characters but short in tokens: the prefix proves nothing, the whole is served.
    long_word = "x" * 5000
    (stream,) = core.submit(parse_completion({"prompt": long_word}, {}), None, 0.0)
    assert stream.num_prompt_tokens == 1


def test_a_lone_surrogate_is_a_400_not_a_tokenizer_crash() -> None:
    async def run() -> list[httpx.Response]:
        async with _client(GatedTokenizer()) as client:
            bodies = [b'{"prompt": "a \\ud800 b"}', b'{"prompt": "ok", "user": "\\udfff"}']
            fine = b'{"prompt": "\\ud83d\\ude00"}'  # a proper pair
            answers = [await client.post("/tokenize", content=body) for body in bodies]
            return [*answers, await client.post("/tokenize", content=fine)]

    *bad, fine = asyncio.run(run())
    for response in bad:
        assert "surrogate" in _assert_openai_error(response, 400)["message"]
    assert fine.status_code == 200, fine.text
