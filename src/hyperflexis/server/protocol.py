"""Parses OpenAI request bodies (and the SLO headers) into `GenerationJob`s, through the request
models in `request_models`; anything wrong raises `APIError` 400 naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.server.errors import bad_request, from_value_error
from hyperflexis.server.request_models import (
    CHAT_REFUSED,
    COMPLETION_REFUSED,
    ChatCompletionRequest,
    CompletionRequest,
    refused_field,
)

JobKind = Literal["completion", "chat"]
OPENAI_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions, also when null
MAX_SLO_MS = 86_400_000  # a TTFT or TPOT target beyond a day is a client's mistake, not a goal


@dataclass(frozen=True, slots=True)
class SLORequest:
    """The SLO a client asked for (body fields or `x-` headers); None: the class default."""

    slo_class: str | None = None
    priority: int | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """One completions prompt: text, or token ids."""

    text: str | None
    token_ids: list[int] | None


@dataclass(frozen=True, slots=True)
class ChatInput:
    """A conversation and how to render it."""

    messages: list[dict[str, str]]
    template: str | None = None  # None: the model's chat template
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    add_generation_prompt: bool = True


@dataclass(frozen=True, slots=True)
class GenerationJob:
    """One parsed request, before tokenisation: one or more prompts, `n` samples each."""

    kind: JobKind
    model: str | None  # as the client named it; None: the served model
    prompts: list[Prompt]  # completions: the prompts, in order (empty for chat)
    chat: ChatInput | None  # chat: the conversation
    max_tokens: int | None  # None: as many as the context leaves
    sampling: dict[str, Any]  # SamplingParams fields other than max_tokens, unvalidated
    stream: bool
    include_usage: bool  # stream_options.include_usage: a final usage chunk
    slo: SLORequest
    echo: bool = False  # completions: the prompt text before each completion
    add_special_tokens: bool = True  # add BOS when tokenising a text prompt
    num_top_logprobs: int | None = None  # None: no logprobs; else alternatives per token

    @property
    def n(self) -> int:
        return int(self.sampling.get("n", 1))

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """Validated parameters; a bad value raises `APIError` 400 naming it."""
        try:
            return SamplingParams(max_tokens=max_tokens, **self.sampling)
        except ValueError as exc:
            raise from_value_error(exc) from None


def parse_completion(body: object, headers: Mapping[str, str]) -> GenerationJob:
    request = validate_body(CompletionRequest, body)
    _refuse(request, COMPLETION_REFUSED)
    prompts = _prompts(request.prompt)
    max_tokens = request.max_tokens
    if max_tokens is None:  # left out or an explicit null: OpenAI's default either way
        max_tokens = OPENAI_COMPLETION_MAX_TOKENS
    return _job(
        "completion",
        request,
        headers,
        prompts=prompts,
        max_tokens=max_tokens,
        echo=bool(request.echo),
        num_top_logprobs=request.logprobs,
    )


def parse_chat(body: object, headers: Mapping[str, str]) -> GenerationJob:
    request = validate_body(ChatCompletionRequest, body)
    _refuse(request, CHAT_REFUSED)
    chat = ChatInput(
        parse_messages(request.messages),
        request.chat_template,
        dict(request.chat_template_kwargs or {}),
        request.add_generation_prompt is not False,
    )
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
    max_tokens = request.max_completion_tokens
    if max_tokens is None:
        max_tokens = request.max_tokens
    return _job(
        "chat",
        request,
        headers,
        chat=chat,
        max_tokens=max_tokens,
        num_top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        add_special_tokens=bool(request.add_special_tokens),  # the template writes BOS
    )


def validate_body(model: type[BaseModel], body: object) -> Any:
    """`body` as `model`, or a 400 naming the first offending parameter as OpenAI does."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = param_name(error["loc"])
        if error["type"] == "extra_forbidden":
            raise bad_request(f"Unrecognized request argument supplied: {param}", param) from None
        raise bad_request(f"invalid {param!r}: {error['msg']}", param) from None


def param_name(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as OpenAI names parameters: `messages[0].content`."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part not in ("str", "list[str]", "list[int]"):  # union member tags
            name += f".{part}" if name else str(part)
    return name


def _refuse(request: CompletionRequest | ChatCompletionRequest, refused: Any) -> None:
    name = refused_field(request, refused)
    if name is not None:
        raise bad_request(f"{name!r} is not supported by HyperFlexis", name)
    options = request.stream_options
    if options is not None and options.continuous_usage_stats:
        param = "stream_options.continuous_usage_stats"
        raise bad_request(f"{param!r} is not supported by HyperFlexis", param)


def _job(
    kind: JobKind,
    request: CompletionRequest | ChatCompletionRequest,
    headers: Mapping[str, str],
    *,
    max_tokens: int | None,
    prompts: list[Prompt] | None = None,
    chat: ChatInput | None = None,
    echo: bool = False,
    num_top_logprobs: int | None = None,
    add_special_tokens: bool = True,
) -> GenerationJob:
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(
            f"invalid sampling parameter 'max_tokens': expected an int >= 1, got {max_tokens!r}",
            "max_tokens",
        )
    sampling = _sampling_fields(request)
    if num_top_logprobs is not None:
        sampling["logprobs"] = num_top_logprobs
        if echo:  # the echoed prompt's tokens get logprobs too (evaluation harnesses score them)
            sampling["prompt_logprobs"] = num_top_logprobs
    if request.add_special_tokens is not None:
        add_special_tokens = request.add_special_tokens
    options = request.stream_options
    return GenerationJob(
        kind=kind,
        model=request.model,
        prompts=prompts or [],
        chat=chat,
        max_tokens=max_tokens,
        sampling=sampling,
        stream=bool(request.stream),
        include_usage=bool(options is not None and options.include_usage),
        slo=_slo_request(request, headers),
        echo=echo,
        add_special_tokens=add_special_tokens,
        num_top_logprobs=num_top_logprobs,
    )


_SAMPLING_FIELDS = (
    "n",
    "best_of",
    "seed",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "allowed_token_ids",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
    "include_stop_str_in_output",
    "skip_special_tokens",
)


def _sampling_fields(request: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
    """The SamplingParams fields the client set (None means the default, as in OpenAI)."""
    return {name: v for name in _SAMPLING_FIELDS if (v := getattr(request, name)) is not None}


def _prompts(value: object) -> list[Prompt]:
    """A string, token ids, or a non-empty list of strings or of token-id lists."""
    if isinstance(value, str) or _is_token_ids(value):
        return [_prompt(value, "prompt")]
    if isinstance(value, list) and value:
        return [_prompt(item, f"prompt[{i}]") for i, item in enumerate(value)]
    raise bad_request(
        "'prompt' must be a string, a list of token ids, or a list of either", "prompt"
    )


def _prompt(value: object, where: str) -> Prompt:
    if isinstance(value, str) and value:
        return Prompt(value, None)
    if _is_token_ids(value) and value:
        assert isinstance(value, list)
        return Prompt(None, list(value))
    raise bad_request(f"'{where}' must be a non-empty string or list of token ids", "prompt")


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


_MESSAGE_KEYS = frozenset({"role", "content", "name"})
_NULL_KEYS = frozenset({"tool_calls", "function_call", "refusal", "audio"})  # only as null


def parse_messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of messages", "messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object", where)
        for key, item in message.items():
            if key not in _MESSAGE_KEYS and not (key in _NULL_KEYS and item is None):
                raise bad_request(f"'{where}.{key}' is not supported", f"{where}.{key}")
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"'{where}.role' must be a string", f"{where}.role")
        parsed = {"role": role, "content": _content(message.get("content"), where)}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise bad_request(f"'{where}.name' must be a string", f"{where}.name")
            parsed["name"] = name  # the chat template decides what a name means
        messages.append(parsed)
    return messages


def _content(content: object, where: str) -> str:
    """A string, or a list of text parts (`{"type": "text", "text": ...}`) joined."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise bad_request(f"'{where}.content' supports only text parts", f"{where}.content")
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"'{where}.content' text must be a string", f"{where}.content")
            texts.append(text)
        return "".join(texts)
    raise bad_request(f"'{where}.content' must be a string", f"{where}.content")


def _slo_request(
    request: CompletionRequest | ChatCompletionRequest, headers: Mapping[str, str]
) -> SLORequest:
    """Body fields win over the `x-` headers of the same meaning."""
    slo_class = request.slo_class
    if slo_class is None:
        slo_class = headers.get("x-slo-class")
    priority = request.priority
    if priority is None:
        priority = _header(headers, "x-priority", int, "an int")
    ttft_ms = _ms(request.ttft_ms, "ttft_ms", headers, "x-slo-ttft-ms")
    tpot_ms = _ms(request.tpot_ms, "tpot_ms", headers, "x-slo-tpot-ms")
    return SLORequest(slo_class, priority, ttft_ms, tpot_ms)


def _ms(value: float | None, name: str, headers: Mapping[str, str], header: str) -> float | None:
    param = name
    if value is None:
        param = header
        value = _header(headers, header, float, "a number")
    if value is None:
        return None
    if not math.isfinite(value) or not 0 < value <= MAX_SLO_MS:
        raise bad_request(f"{param!r} must be a number in (0, {MAX_SLO_MS}] (milliseconds)", param)
    return float(value)


def _header(headers: Mapping[str, str], header: str, kind: type[Any], expected: str) -> Any:
    if header not in headers:
        return None
    try:
        return kind(headers[header])
    except ValueError:
        raise bad_request(f"header {header!r} must be {expected}", header) from None
