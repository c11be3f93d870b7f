"""Every field of the completions and chat request models, table-driven: implemented (the parsed
job or its SamplingParams carry it), accepted without behaviour (the job is unchanged), or
refused with a 400 naming it. The tables must cover every declared field, so a field added to a
model without a decision here fails this test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.server.errors import APIError
from hyperflexis.server.protocol import GenerationJob, parse_chat, parse_completion
from hyperflexis.server.request_models import (
    ACCEPTED,
    CHAT_REFUSED,
    COMPLETION_REFUSED,
    ChatCompletionRequest,
    CompletionRequest,
)

Check = Callable[[GenerationJob, SamplingParams], bool]
BASE = {"completion": {"prompt": "hi"}, "chat": {"messages": [{"role": "user", "content": "hi"}]}}


def _sampled(name: str, expected: object) -> Check:
    return lambda job, params: getattr(params, name) == expected


# Implemented on both endpoints: field -> (value, what the parsed request must show).
SHARED: dict[str, tuple[object, Check]] = {
    "model": ("tiny", lambda job, p: job.model == "tiny"),
    "n": (3, _sampled("n", 3)),
    "best_of": (1, _sampled("best_of", 1)),
    "seed": (11, _sampled("seed", 11)),
    "temperature": (0.5, _sampled("temperature", 0.5)),
    "top_p": (0.9, _sampled("top_p", 0.9)),
    "top_k": (7, _sampled("top_k", 7)),
    "min_p": (0.2, _sampled("min_p", 0.2)),
    "presence_penalty": (0.5, _sampled("presence_penalty", 0.5)),
    "frequency_penalty": (-0.5, _sampled("frequency_penalty", -0.5)),
    "repetition_penalty": (1.3, _sampled("repetition_penalty", 1.3)),
    "logit_bias": ({"42": 5.0}, _sampled("logit_bias", {42: 5.0})),
    "allowed_token_ids": ([3, 4], _sampled("allowed_token_ids", [3, 4])),
    "stop": ("x", _sampled("stop", ["x"])),
    "stop_token_ids": ([9], _sampled("stop_token_ids", [9])),
    "ignore_eos": (True, _sampled("ignore_eos", True)),
    "min_tokens": (2, _sampled("min_tokens", 2)),
    "include_stop_str_in_output": (True, _sampled("include_stop_str_in_output", True)),
    "skip_special_tokens": (False, _sampled("skip_special_tokens", False)),
    "add_special_tokens": (True, lambda job, p: job.add_special_tokens),
    "max_tokens": (5, lambda job, p: job.max_tokens == 5),
    "stream": (True, lambda job, p: job.stream),
    "stream_options": ({"include_usage": True}, lambda job, p: job.include_usage),
    "slo_class": ("batch", lambda job, p: job.slo.slo_class == "batch"),
    "priority": (2, lambda job, p: job.slo.priority == 2),
    "ttft_ms": (250, lambda job, p: job.slo.ttft_ms == 250.0),
    "tpot_ms": (40, lambda job, p: job.slo.tpot_ms == 40.0),
}
COMPLETION_ONLY: dict[str, tuple[object, Check]] = {
    "prompt": (["a", "b"], lambda job, p: len(job.prompts) == 2),
    "echo": (True, lambda job, p: job.echo),
    "logprobs": (3, lambda job, p: job.num_top_logprobs == 3 and p.logprobs == 3),
}
CHAT_ONLY: dict[str, tuple[object, Check]] = {
    "messages": (
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        lambda job, p: job.chat is not None and len(job.chat.messages) == 2,
    ),
    "max_completion_tokens": (6, lambda job, p: job.max_tokens == 6),
    "logprobs": (True, lambda job, p: job.num_top_logprobs == 0 and p.logprobs == 0),
    "top_logprobs": (4, lambda job, p: job.num_top_logprobs == 4),  # with logprobs: true
    "chat_template": ("{{ messages[0].content }}", lambda job, p: job.chat.template is not None),  # type: ignore[union-attr]
    "chat_template_kwargs": ({"x": 1}, lambda job, p: job.chat.template_kwargs == {"x": 1}),  # type: ignore[union-attr]
    "add_generation_prompt": (False, lambda job, p: not job.chat.add_generation_prompt),  # type: ignore[union-attr]
}
# Accepted without behaviour: a value for each.
ACCEPTED_VALUES: dict[str, object] = {
    "user": "u-1",
    "metadata": {"k": "v"},
    "store": True,
    "service_tier": "auto",
    "prompt_cache_key": "k",
    "safety_identifier": "s",
    "cache_salt": "salt",
    "parallel_tool_calls": True,
    "request_id": "r-1",
}
# Refused: a value that asks for the unimplemented behaviour.
REFUSED_VALUES: dict[str, object] = {
    "use_beam_search": True,
    "length_penalty": 0.5,
    "prompt_logprobs": 1,
    "truncate_prompt_tokens": 8,
    "spaces_between_special_tokens": False,
    "bad_words": ["x"],
    "logits_processors": ["p"],
    "return_tokens_as_token_ids": True,
    "guided_json": {"type": "object"},
    "guided_regex": "a+",
    "guided_choice": ["a", "b"],
    "guided_grammar": "root ::= x",
    "structural_tag": "{}",
    "guided_decoding_backend": "xgrammar",
    "guided_whitespace_pattern": " ",
    "kv_transfer_params": {},
    "vllm_xargs": {"a": 1},
    "mm_processor_kwargs": {},
    "response_format": {"type": "json_object"},
    "suffix": "end",
    "prompt_embeds": "AAAA",
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "required",
    "functions": [{"name": "f"}],
    "function_call": {"name": "f"},
    "audio": {"voice": "alloy"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "high",
    "verbosity": "low",
    "web_search_options": {},
    "documents": [{"text": "d"}],
    "continue_final_message": True,
    "echo": True,
}

KINDS: dict[str, tuple[Any, Any, dict[str, tuple[object, Check]], dict[str, Any]]] = {
    "completion": (
        CompletionRequest,
        parse_completion,
        {**SHARED, **COMPLETION_ONLY},
        COMPLETION_REFUSED,
    ),
    "chat": (ChatCompletionRequest, parse_chat, {**SHARED, **CHAT_ONLY}, CHAT_REFUSED),
}


def _cases() -> list[tuple[str, str]]:
    return [(kind, name) for kind, (model, *_) in KINDS.items() for name in model.model_fields]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_field_has_a_decision(kind: str) -> None:
    model, _, implemented, refused = KINDS[kind]
    decided = set(implemented) | set(ACCEPTED) | set(refused)
    assert set(model.model_fields) == decided
    assert not set(implemented) & set(refused) and not set(ACCEPTED) & set(refused)


@pytest.mark.parametrize(("kind", "name"), _cases())
def test_field_is_implemented_accepted_or_refused_by_name(kind: str, name: str) -> None:
    _, parse, implemented, refused = KINDS[kind]
    body = dict(BASE[kind])
    if name in implemented:
        value, check = implemented[name]
        body[name] = value
        if name == "top_logprobs":
            body["logprobs"] = True
        job = parse(body, {})
        assert check(job, job.sampling_params(8)), name
    elif name in ACCEPTED:
        plain = parse(dict(BASE[kind]), {})
        body[name] = ACCEPTED_VALUES[name]
        assert parse(body, {}) == plain
    else:
        for default in refused[name]:  # the defaults are what a client sends when not asking
            parse({**body, name: default}, {})
        body[name] = REFUSED_VALUES[name]
        with pytest.raises(APIError) as info:
            parse(body, {})
        assert (info.value.status, info.value.param) == (400, name)
        assert name in info.value.message


@pytest.mark.parametrize("kind", list(KINDS))
def test_unknown_fields_are_refused_by_name(kind: str) -> None:
    _, parse, _, _ = KINDS[kind]
    with pytest.raises(APIError) as info:
        parse({**BASE[kind], "temprature": 0.5}, {})
    assert info.value.param == "temprature" and "Unrecognized" in info.value.message


def test_pairings_and_types_are_checked() -> None:
    chat = BASE["chat"]
    assert _param(parse_chat, {**chat, "top_logprobs": 2}) == "top_logprobs"  # needs logprobs
    scored = parse_completion({"prompt": "x", "echo": True, "logprobs": 1}, {})
    assert scored.sampling_params(1).prompt_logprobs == 1  # the echoed prompt is scored too
    assert (
        parse_completion({"prompt": "x", "logprobs": 1}, {}).sampling_params(1).prompt_logprobs
        is None
    )
    assert _param(parse_completion, {"prompt": "x", "stream": "yes"}) == "stream"
    assert _param(parse_completion, {"prompt": "x", "n": True}) == "n"
    continuous = {"prompt": "x", "stream_options": {"continuous_usage_stats": True}}
    assert _param(parse_completion, continuous) == "stream_options.continuous_usage_stats"


def _param(parse: Any, body: dict[str, Any]) -> str | None:
    with pytest.raises(APIError) as info:
        parse(body, {})
    return info.value.param
