"""Parses OpenAI request bodies (and the SLO headers) into `GenerationJob`s, checking every
field's type and range; anything wrong raises `APIError` 400 naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.server.errors import bad_request, from_value_error

JobKind = Literal["completion", "chat"]


@dataclass(frozen=True, slots=True)
class SLORequest:
    """The SLO a client asked for (body fields or `x-` headers); None: the class default."""

    slo_class: str | None = None
    priority: int | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None


@dataclass(frozen=True, slots=True)
class GenerationJob:
    """One parsed request, before tokenisation."""

    kind: JobKind
    model: str | None  # as the client named it; None: the served model
    prompt: str | None  # completions: prompt text (None when given as token ids)
    prompt_token_ids: list[int] | None  # completions: prompt as token ids
    messages: list[dict[str, str]] | None  # chat: the conversation
    max_tokens: int | None  # None: as many as the context leaves
    sampling: dict[str, Any]  # SamplingParams fields other than max_tokens, unvalidated
    stream: bool
    include_usage: bool  # stream_options.include_usage: a final usage chunk
    slo: SLORequest

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """Validated parameters; a bad value raises `APIError` 400 naming it."""
        try:
            return SamplingParams(max_tokens=max_tokens, **self.sampling)
        except ValueError as exc:
            raise from_value_error(exc) from None


def parse_completion(body: object, headers: Mapping[str, str]) -> GenerationJob:
    fields = _object(body)
    prompt, token_ids = _prompt(fields.get("prompt"))
    if fields.get("echo"):
        raise bad_request("'echo' is not supported", "echo")
    best_of = fields.get("best_of")
    if best_of is not None and best_of != 1:
        raise bad_request("'best_of' must be 1: one completion per request", "best_of")
    if fields.get("suffix") is not None:
        raise bad_request("'suffix' is not supported", "suffix")
    return _job("completion", fields, headers, prompt=prompt, prompt_token_ids=token_ids)


def parse_chat(body: object, headers: Mapping[str, str]) -> GenerationJob:
    fields = _object(body)
    messages = _messages(fields.get("messages"))
    if fields.get("top_logprobs") is not None:
        raise bad_request("'top_logprobs' is not supported", "top_logprobs")
    max_tokens = fields.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = fields.get("max_tokens")
    return _job("chat", fields, headers, messages=messages, max_tokens=max_tokens)


def _job(
    kind: JobKind,
    fields: dict[str, Any],
    headers: Mapping[str, str],
    *,
    prompt: str | None = None,
    prompt_token_ids: list[int] | None = None,
    messages: list[dict[str, str]] | None = None,
    max_tokens: object = None,
) -> GenerationJob:
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    n = fields.get("n")
    if n is not None and n != 1:
        raise bad_request("'n' must be 1: one completion per request", "n")
    if fields.get("logprobs"):
        raise bad_request("'logprobs' is not supported", "logprobs")
    if kind == "completion":
        max_tokens = fields.get("max_tokens", 16)  # OpenAI's completions default
    if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise bad_request(
            f"invalid sampling parameter 'max_tokens': expected an int >= 1, got {max_tokens!r}",
            "max_tokens",
        )
    stream = fields.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    return GenerationJob(
        kind=kind,
        model=model,
        prompt=prompt,
        prompt_token_ids=prompt_token_ids,
        messages=messages,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        sampling=_sampling_fields(fields),
        stream=stream,
        include_usage=_include_usage(fields.get("stream_options")),
        slo=_slo_request(fields, headers),
    )


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _prompt(value: object) -> tuple[str | None, list[int] | None]:
    """A string, a list of one string, token ids, or a list of one list of token ids."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise bad_request("'prompt' is empty", "prompt")
        return value, None
    if isinstance(value, list):
        if not value:
            raise bad_request("'prompt' is empty", "prompt")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return None, list(value)
        if all(isinstance(p, (str, list)) for p in value):
            raise bad_request("only one prompt per request is supported", "prompt")
    raise bad_request(
        "'prompt' must be a string or a list of token ids (one prompt per request)", "prompt"
    )


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of messages", "messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object", where)
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"'{where}.role' must be a string", f"{where}.role")
        messages.append({"role": role, "content": _content(message.get("content"), where)})
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


def _sampling_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The SamplingParams fields the client set (None means the default, as in OpenAI)."""
    sampling: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed", "ignore_eos", "stop_token_ids"):
        if fields.get(name) is not None:
            sampling[name] = fields[name]
    stop = fields.get("stop")
    if stop is not None:
        sampling["stop"] = [stop] if isinstance(stop, str) else stop
    top_k = fields.get("top_k")
    if top_k is not None and top_k != -1:  # vLLM's -1: no top-k
        sampling["top_k"] = top_k
    return sampling


def _include_usage(options: object) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad_request(
            "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
        )
    return include


def _slo_request(fields: dict[str, Any], headers: Mapping[str, str]) -> SLORequest:
    """Body fields win over the `x-` headers of the same meaning."""
    slo_class = fields.get("slo_class", headers.get("x-slo-class"))
    if slo_class is not None and not isinstance(slo_class, str):
        raise bad_request("'slo_class' must be a string", "slo_class")
    priority = _int_field(fields, "priority", headers, "x-priority")
    ttft_ms = _ms_field(fields, "ttft_ms", headers, "x-slo-ttft-ms")
    tpot_ms = _ms_field(fields, "tpot_ms", headers, "x-slo-tpot-ms")
    return SLORequest(slo_class, priority, ttft_ms, tpot_ms)


def _int_field(
    fields: dict[str, Any], name: str, headers: Mapping[str, str], header: str
) -> int | None:
    value: object = fields.get(name)
    param = name
    if value is None and header in headers:
        param = header
        try:
            value = int(headers[header])
        except ValueError:
            raise bad_request(f"header {header!r} must be an int", header) from None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"{param!r} must be an int", param)
    return value


def _ms_field(
    fields: dict[str, Any], name: str, headers: Mapping[str, str], header: str
) -> float | None:
    value: object = fields.get(name)
    param = name
    if value is None and header in headers:
        param = header
        try:
            value = float(headers[header])
        except ValueError:
            raise bad_request(f"header {header!r} must be a number", header) from None
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise bad_request(f"{param!r} must be a number > 0 (milliseconds)", param)
    return float(value)
