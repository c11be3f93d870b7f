"""Request parsing, SLO resolution with API keys, response shapes: pure functions, no server."""

from __future__ import annotations

from typing import Any

import pytest

from hyperflexis.core.slo import SLOClass, SLOClasses
from hyperflexis.server.access import Access
from hyperflexis.server.errors import APIError
from hyperflexis.server.protocol import SLORequest, parse_chat, parse_completion
from hyperflexis.server.responses import finish_reason, full_response, stream_chunk, usage_chunk


def _error(call: Any, *args: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)
    return info.value


def test_completion_defaults_follow_openai() -> None:
    job = parse_completion({"prompt": "hi"}, {})
    assert job.kind == "completion" and job.prompt == "hi" and job.prompt_token_ids is None
    assert job.max_tokens == 16  # OpenAI's completions default
    assert not job.stream and not job.include_usage
    assert job.sampling == {}
    assert job.slo == SLORequest()
    params = job.sampling_params(16)
    assert params.temperature == 1.0 and params.top_p == 1.0


def test_prompt_shapes() -> None:
    assert parse_completion({"prompt": ["hi"]}, {}).prompt == "hi"
    assert parse_completion({"prompt": [1, 2, 3]}, {}).prompt_token_ids == [1, 2, 3]
    assert parse_completion({"prompt": [[4, 5]]}, {}).prompt_token_ids == [4, 5]
    for bad in ("", [], ["a", "b"], [[1], [2]], 7, [1.5], None):
        assert _error(parse_completion, {"prompt": bad}, {}).param == "prompt"


def test_chat_max_tokens_and_content_parts() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    job = parse_chat({"messages": messages}, {})
    assert job.max_tokens is None  # as many as the context leaves
    assert job.messages == [{"role": "user", "content": "ab"}]
    both = parse_chat({"messages": messages, "max_tokens": 9, "max_completion_tokens": 5}, {})
    assert both.max_tokens == 5
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]
    assert _error(parse_chat, {"messages": image}, {}).param == "messages[0].content"


def test_sampling_fields_are_validated_by_sampling_params() -> None:
    job = parse_completion(
        {"prompt": "x", "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "\n", "top_k": -1}, {}
    )
    params = job.sampling_params(4)
    assert params.stop == ["\n"] and params.seed == 3 and params.top_k is None
    bad = parse_completion({"prompt": "x", "top_p": 0}, {})
    error = _error(bad.sampling_params, 4)
    assert error.status == 400 and error.param == "top_p"


def test_slo_fields_body_wins_over_headers() -> None:
    headers = {
        "x-slo-class": "batch",
        "x-priority": "2",
        "x-slo-ttft-ms": "900",
        "x-slo-tpot-ms": "40",
    }
    from_headers = parse_completion({"prompt": "x"}, headers).slo
    assert from_headers == SLORequest("batch", 2, 900.0, 40.0)
    body = {"prompt": "x", "slo_class": "interactive", "priority": 0, "ttft_ms": 100}
    assert parse_completion(body, headers).slo == SLORequest("interactive", 0, 100.0, 40.0)
    assert _error(parse_completion, {"prompt": "x", "priority": True}, {}).param == "priority"
    assert _error(parse_completion, {"prompt": "x", "tpot_ms": 0}, {}).param == "tpot_ms"


def test_unsupported_fields_are_refused() -> None:
    for field, value in (
        ("n", 3),
        ("echo", True),
        ("best_of", 2),
        ("logprobs", 2),
        ("suffix", "s"),
    ):
        assert _error(parse_completion, {"prompt": "x", field: value}, {}).param == field
    assert parse_completion({"prompt": "x", "n": 1, "best_of": 1, "echo": False}, {}).prompt == "x"


CLASSES = SLOClasses(
    (
        SLOClass("interactive", 0.5, 0.04, 0),
        SLOClass("standard", 2.0, 0.1, 1),
        SLOClass("batch", 10.0, 0.3, 2),
    ),
    default="standard",
    api_keys={"sk-gold": "interactive", "sk-bulk": "batch"},
)


def test_without_keys_requests_are_trusted() -> None:
    access = Access(CLASSES)
    assert access.bound_class({}) is None
    slo = access.resolve(SLORequest("interactive", priority=0, ttft_ms=100), None)
    assert (slo.class_name, slo.priority, slo.ttft_s, slo.tpot_s) == ("interactive", 0, 0.1, 0.04)
    assert access.resolve(SLORequest(), None).class_name == "standard"
    assert _error(access.resolve, SLORequest("gold"), None).param == "slo_class"


def test_keys_are_required_and_bound_what_a_client_may_ask() -> None:
    access = Access(CLASSES, api_key="sk-server")
    assert _error(access.bound_class, {}).status == 401
    assert _error(access.bound_class, {"authorization": "Bearer sk-wrong"}).status == 401
    assert _error(access.bound_class, {"authorization": "Basic sk-server"}).status == 401
    gold = access.bound_class({"authorization": "Bearer sk-gold"})
    bulk = access.bound_class({"authorization": "Bearer sk-bulk"})
    server = access.bound_class({"authorization": "Bearer sk-server"})
    assert gold is not None and bulk is not None and server is not None
    assert (gold.name, bulk.name, server.name) == ("interactive", "batch", "standard")

    greedy = SLORequest("interactive", priority=0, ttft_ms=1, tpot_ms=1)
    clamped = access.resolve(greedy, bulk)
    assert (clamped.class_name, clamped.priority) == ("batch", 2)
    assert (clamped.ttft_s, clamped.tpot_s) == (10.0, 0.3)
    assert access.resolve(greedy, gold).priority == 0
    modest = access.resolve(SLORequest("batch", priority=5, ttft_ms=60_000), gold)
    assert (modest.class_name, modest.priority, modest.ttft_s) == ("batch", 5, 60.0)


def test_response_shapes() -> None:
    body = full_response("chat", "id", 1, "m", "hello", "length", 3, 2)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    first = stream_chunk("chat", "id", 1, "m", "", None, False, first=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first
    last = stream_chunk("completion", "id", 1, "m", None, "stop", True)
    assert last["choices"][0]["text"] == "" and last["usage"] is None
    assert usage_chunk("completion", "id", 1, "m", 3, 4)["choices"] == []
    assert [finish_reason(r) for r in ("stop", "length", "abort", None)] == [
        "stop",
        "length",
        "stop",
        None,
    ]
