"""Response bodies and stream chunks shaped exactly like OpenAI's: choices, usage, and logprobs
in both formats (completions' parallel lists, chat's `content` entries)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperflexis.core.outputs import Logprob
from hyperflexis.server.protocol import JobKind

_FINISH_REASONS = {"stop": "stop", "length": "length"}
TokenText = Callable[[int], str]  # a token id's text, special tokens included


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


@dataclass(slots=True)
class ChoiceLogprobs:
    """One choice's logprobs so far, formatted for its endpoint."""

    kind: JobKind
    num_top: int  # alternatives per token
    token_text: TokenText
    text_offset: int = 0  # completions: characters before the next token's text
    entries: list[dict[str, Any]] = field(default_factory=list)  # chat's `content`
    tokens: list[str] = field(default_factory=list)  # completions' parallel lists
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offsets: list[int] = field(default_factory=list)

    def add(self, token_ids: list[int], logprobs: list[dict[int, Logprob]]) -> None:
        for token_id, entry in zip(token_ids, logprobs, strict=False):
            text = self.token_text(token_id)
            top = sorted(
                (lp.rank, t, lp.logprob) for t, lp in entry.items() if lp.rank <= self.num_top
            )
            sampled = entry[token_id].logprob
            if self.kind == "chat":
                self.entries.append(
                    {
                        **_chat_token(text, sampled),
                        "top_logprobs": [_chat_token(self.token_text(t), lp) for _, t, lp in top],
                    }
                )
                continue
            self.tokens.append(text)
            self.token_logprobs.append(sampled)
            # vLLM's shape: the sampled token with the most likely ones.
            alternatives = {self.token_text(t): lp for _, t, lp in top}
            self.top_logprobs.append({text: sampled, **alternatives})
            self.text_offsets.append(self.text_offset)
            self.text_offset += len(text)

    def add_prompt(self, token_ids: list[int], logprobs: list[dict[int, Logprob] | None]) -> None:
        """Completions with echo: the prompt's tokens first, the first one without a logprob
        (nothing predicts it), offsets from the start of the echoed text."""
        offset = 0
        for token_id, entry in zip(token_ids, logprobs, strict=False):
            text = self.token_text(token_id)
            self.tokens.append(text)
            self.text_offsets.append(offset)
            offset += len(text)
            if entry is None:
                self.token_logprobs.append(None)
                self.top_logprobs.append(None)
                continue
            top = sorted(
                (lp.rank, t, lp.logprob) for t, lp in entry.items() if lp.rank <= self.num_top
            )
            self.token_logprobs.append(entry[token_id].logprob)
            alternatives = {self.token_text(t): lp for _, t, lp in top}
            self.top_logprobs.append({text: entry[token_id].logprob, **alternatives})

    def body(self) -> dict[str, Any]:
        """The choice's `logprobs` value."""
        if self.kind == "chat":
            return {"content": self.entries, "refusal": None}
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offsets,
        }

    def take(self) -> dict[str, Any]:
        """The logprobs added since the last take (a stream chunk's share)."""
        body = self.body()
        self.entries, self.tokens, self.token_logprobs = [], [], []
        self.top_logprobs, self.text_offsets = [], []
        return body


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def choice(
    kind: JobKind, index: int, text: str, reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    """One entry of a full response's `choices`."""
    if kind == "completion":
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": reason,
    }


def full_response(
    kind: JobKind,
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    num_prompt_tokens: int,
    num_completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion" if kind == "completion" else "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
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
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One chunk of a stream; `text` None sends no content (the final chunk of a chat)."""
    choice_body: dict[str, Any]
    if kind == "completion":
        choice_body = {
            "index": index,
            "text": text or "",
            "logprobs": logprobs,
            "finish_reason": reason,
        }
        obj = "text_completion"
    else:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice_body = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": reason,
        }
        obj = "chat.completion.chunk"
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice_body],
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
