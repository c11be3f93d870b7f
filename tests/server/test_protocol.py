"""Request parsing, SLO resolution with API keys, response shapes: pure functions, no server."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hyperflexis.core.outputs import Logprob
from hyperflexis.core.slo import SLOClass, SLOClasses
from hyperflexis.server import responses
from hyperflexis.server.access import Access
from hyperflexis.server.errors import APIError
from hyperflexis.server.protocol import Prompt, SLORequest, parse_chat, parse_completion
from hyperflexis.server.responses import finish_reason, full_response, stream_chunk, usage_chunk


def _error(call: Any, *args: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)
    return info.value


def test_completion_defaults_follow_openai() -> None:
    job = parse_completion({"prompt": "hi"}, {})
    assert job.kind == "completion" and job.prompts == [Prompt("hi", None)]
    assert job.max_tokens == 16  # OpenAI's completions default
    assert parse_completion({"prompt": "hi", "max_tokens": None}, {}).max_tokens == 16
    assert not job.stream and not job.include_usage and not job.echo
    assert job.sampling == {} and job.num_top_logprobs is None and job.n == 1
    assert job.slo == SLORequest()
    params = job.sampling_params(16)
    assert params.temperature == 1.0 and params.top_p == 1.0


def test_prompt_shapes() -> None:
    assert parse_completion({"prompt": ["hi"]}, {}).prompts == [Prompt("hi", None)]
    assert parse_completion({"prompt": [1, 2, 3]}, {}).prompts == [Prompt(None, [1, 2, 3])]
    assert parse_completion({"prompt": [[4, 5]]}, {}).prompts == [Prompt(None, [4, 5])]
    several = parse_completion({"prompt": ["a", [1], "b"]}, {}).prompts
    assert several == [Prompt("a", None), Prompt(None, [1]), Prompt("b", None)]
    for bad in ("", [], [""], [[]], 7, [1.5], None, [True]):
        assert _error(parse_completion, {"prompt": bad}, {}).param == "prompt"


def test_chat_max_tokens_and_content_parts() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    job = parse_chat({"messages": messages}, {})
    assert job.max_tokens is None  # as many as the context leaves
    assert job.chat is not None and job.chat.messages == [{"role": "user", "content": "ab"}]
    assert not job.add_special_tokens  # the template writes BOS
    both = parse_chat({"messages": messages, "max_tokens": 9, "max_completion_tokens": 5}, {})
    assert both.max_tokens == 5
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]
    assert _error(parse_chat, {"messages": image}, {}).param == "messages[0].content"
    tool = [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]
    assert _error(parse_chat, {"messages": tool}, {}).param == "messages[0].tool_calls"
    history = [{"role": "assistant", "content": "x", "tool_calls": None, "name": "bot"}]
    assert parse_chat({"messages": history}, {}).chat.messages[0]["name"] == "bot"  # type: ignore[union-attr]


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
    modest = access.resolve(SLORequest("batch", priority=2, ttft_ms=60_000), gold)
    assert (modest.class_name, modest.priority, modest.ttft_s) == ("batch", 2, 60.0)


def test_priority_and_slo_targets_are_range_checked() -> None:
    access = Access(CLASSES)  # priorities 0 (interactive) to 2 (batch)
    for priority in (-1, 3):
        error = _error(access.resolve, SLORequest(priority=priority), None)
        assert (error.status, error.param) == (400, "priority") and "[0, 2]" in error.message
    for field in ("ttft_ms", "tpot_ms"):
        for bad in (0, -5, 1e12, math.inf):
            error = _error(parse_completion, {"prompt": "x", field: bad}, {})
            assert (error.status, error.param) == (400, field), (field, bad)
    for header in ("x-slo-ttft-ms", "x-slo-tpot-ms"):
        assert _error(parse_completion, {"prompt": "x"}, {header: "1e12"}).param == header


def test_keys_are_compared_in_full() -> None:
    access = Access(CLASSES, api_key="sk-server")
    for wrong in ("sk-serve", "sk-server-", "sk-gol", "sk-golden", "SK-SERVER"):
        assert _error(access.bound_class, {"authorization": f"Bearer {wrong}"}).status == 401


def test_response_shapes() -> None:
    choice = responses.choice("chat", 0, "hello", "length", None)
    body = full_response("chat", "id", 1, "m", [choice], 3, 2)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    first = stream_chunk("chat", "id", 1, "m", "", None, False, first=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first
    last = stream_chunk("completion", "id", 1, "m", None, "stop", True, index=3)
    assert last["choices"][0]["text"] == "" and last["usage"] is None
    assert last["choices"][0]["index"] == 3
    assert usage_chunk("completion", "id", 1, "m", 3, 4)["choices"] == []
    assert [finish_reason(r) for r in ("stop", "length", "abort", None)] == [
        "stop",
        "length",
        "stop",
        None,
    ]


def test_logprobs_in_both_formats() -> None:
    entry = {7: Logprob(-0.5, 2), 9: Logprob(-0.1, 1), 4: Logprob(-3.0, 3)}
    text = {7: "a", 9: "bc", 4: "d"}.__getitem__
    completion = responses.ChoiceLogprobs("completion", 2, text, text_offset=5)
    completion.add([7, 9], [entry, entry])
    assert completion.body() == {
        "tokens": ["a", "bc"],
        "token_logprobs": [-0.5, -0.1],
        "top_logprobs": [{"a": -0.5, "bc": -0.1}, {"bc": -0.1, "a": -0.5}],
        "text_offset": [5, 6],
    }
    chat = responses.ChoiceLogprobs("chat", 1, text)
    chat.add([7], [entry])
    (content,) = chat.body()["content"]
    assert content["token"] == "a" and content["logprob"] == -0.5 and content["bytes"] == [97]
    assert content["top_logprobs"] == [{"token": "bc", "logprob": -0.1, "bytes": [98, 99]}]
    assert chat.take()["content"] and chat.take()["content"] == []
