"""Response bodies and stream chunks shaped exactly like OpenAI's."""

from __future__ import annotations

from typing import Any

from hyperflexis.server.protocol import JobKind

_FINISH_REASONS = {"stop": "stop", "length": "length"}


def finish_reason(reason: str | None) -> str | None:
    """OpenAI knows "stop" and "length"; anything else that still returns text (an abort) is
    reported as "stop"."""
    if reason is None:
        return None
    return _FINISH_REASONS.get(reason, "stop")


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
    }


def full_response(
    kind: JobKind,
    response_id: str,
    created: int,
    model: str,
    text: str,
    reason: str | None,
    num_prompt_tokens: int,
    num_completion_tokens: int,
) -> dict[str, Any]:
    choice: dict[str, Any]
    if kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    else:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }
        obj = "chat.completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(num_prompt_tokens, num_completion_tokens),
        "system_fingerprint": None,
    }


def stream_chunk(
    kind: JobKind,
    response_id: str,
    created: int,
    model: str,
    text: str | None,
    reason: str | None,
    include_usage: bool,
    *,
    first: bool = False,
) -> dict[str, Any]:
    """One chunk of a stream; `text` None sends no content (the final chunk of a chat)."""
    choice: dict[str, Any]
    if kind == "completion":
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    else:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        obj = "chat.completion.chunk"
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "system_fingerprint": None,
    }
    if include_usage:
        chunk["usage"] = None  # OpenAI: null on every chunk but the usage one
    return chunk


def usage_chunk(
    kind: JobKind,
    response_id: str,
    created: int,
    model: str,
    num_prompt_tokens: int,
    num_completion_tokens: int,
) -> dict[str, Any]:
    """The last chunk of a stream with `include_usage`: no choices, the usage."""
    return {
        "id": response_id,
        "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(num_prompt_tokens, num_completion_tokens),
        "system_fingerprint": None,
    }
