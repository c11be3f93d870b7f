"""Bad input against a live server: fuzzed bodies (hypothesis) never get a 5xx and always get
JSON (an OpenAI error for a 4xx), and the server keeps answering; a large body does not hold up
/health or another client's request. The context is short (--max-model-len 64), so whatever
the fuzzer makes valid runs in milliseconds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.reliability.quiet import Served, assert_quiescent, serve
from tests.server.reliability.sse import request

MAX_MODEL_LEN = 64
MAX_REQUEST_BYTES = 4 * 2**20
ROUTES = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
FIELDS = (
    "prompt", "messages", "tokens", "model", "n", "best_of", "seed", "temperature", "top_p",
    "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logit_bias", "allowed_token_ids", "stop", "stop_token_ids", "ignore_eos", "min_tokens",
    "max_tokens", "stream", "stream_options", "slo_class", "priority", "ttft_ms", "tpot_ms",
    "logprobs", "top_logprobs", "echo", "user", "add_special_tokens", "chat_template",
    "add_generation_prompt", "include_stop_str_in_output", "skip_special_tokens",
)  # fmt: skip


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("bad-input-server")
    args = ["--model", str(server_model_dir), "--profile", str(fixed_profile)]
    args += ["--max-model-len", str(MAX_MODEL_LEN), "--max-request-bytes", str(MAX_REQUEST_BYTES)]
    with serve(args, tmp, num_instances=1) as live:
        yield live


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "user", "system", "assistant", "interactive", "\ud800", "<s>"])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]), "content": _values}
)
_bodies = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10),
    _values,
    max_size=8,
).flatmap(
    lambda body: st.fixed_dictionaries(
        {
            "prompt": st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 600), max_size=20)),
            "messages": st.lists(_message, max_size=3),
            "max_tokens": st.integers(-2, 80),
        }
    ).map(lambda base: {**base, **body})
)


def _check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "data: [DONE]", response.text
        for event in events[:-1]:
            json.loads(event.removeprefix("data: "))
        return
    payload = response.json()
    if response.status_code >= 400:
        assert set(payload["error"]) == {"message", "type", "param", "code"}, payload


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(ROUTES), body=_bodies | st.binary(max_size=64).map(lambda b: b))
def test_fuzzed_bodies_never_get_a_5xx(
    served: Served, route: str, body: dict[str, Any] | bytes
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{served.url}{route}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    _check_answer(response)


def test_the_server_still_serves_after_the_fuzzing(served: Served) -> None:
    outcome = request(served.url, {"prompt": "a b c", "max_tokens": 4, "ignore_eos": True})
    assert outcome.complete and outcome.num_completion_tokens == 4, outcome
    assert_quiescent(served)


def test_a_large_body_does_not_hold_up_health_or_another_client(served: Served) -> None:
    """A body of almost the limit, sent slowly: while it arrives, and while the server parses
    and checks it, /health and a short completion are answered."""
    uploading = threading.Event()
    release = threading.Event()
    answers: dict[str, httpx.Response] = {}
    text = "word " * ((MAX_REQUEST_BYTES - 100) // 5)
    payload = json.dumps({"prompt": text, "max_tokens": 1}).encode()

    def chunks() -> Iterator[bytes]:
        step = 2**16
        yield payload[:step]
        uploading.set()
        assert release.wait(30)
        for start in range(step, len(payload), step):
            yield payload[start : start + step]

    def big() -> None:
        answers["big"] = httpx.post(f"{served.url}/v1/completions", content=chunks(), timeout=60)

    thread = threading.Thread(target=big)
    thread.start()
    assert uploading.wait(30)
    started = time.monotonic()
    health = httpx.get(f"{served.url}/health", timeout=10)
    other = request(served.url, {"prompt": "a b", "max_tokens": 2, "ignore_eos": True})
    assert health.status_code == 200 and other.complete, (health.text, other)
    assert "big" not in answers  # still uploading: both were answered meanwhile
    release.set()
    during = [httpx.get(f"{served.url}/health", timeout=10) for _ in range(5)]
    thread.join(60)
    assert all(r.status_code == 200 for r in during)
    big_answer = answers["big"]
    assert big_answer.status_code == 400, big_answer.text  # far over the 64-token context
    assert big_answer.json()["error"]["code"] == "context_length_exceeded"
    assert time.monotonic() - started < 30
    assert_quiescent(served)
