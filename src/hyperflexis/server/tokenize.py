"""vLLM's /tokenize and /detokenize: the served model's tokenizer over HTTP (vLLM's benchmark
client counts tokens with it). Bodies are checked as strictly as the generation endpoints'."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from hyperflexis.server.body import loads, read_body
from hyperflexis.server.core import ServingCore
from hyperflexis.server.errors import bad_request
from hyperflexis.server.protocol import ChatInput, parse_messages, validate_body


class TokenizeRequest(BaseModel):
    """A prompt, or chat messages rendered through the chat template first."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | None = None
    messages: Any = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages
    add_generation_prompt: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    tokens: list[int]


async def tokenize_route(core: ServingCore, request: Request) -> dict[str, Any]:
    """/tokenize, its parsing and tokenisation in a worker thread (see `generation`)."""
    core.access.bound_class(request.headers)
    raw = await read_body(request, core.max_request_bytes)
    return await asyncio.to_thread(lambda: tokenize(core, loads(raw)))


async def detokenize_route(core: ServingCore, request: Request) -> dict[str, Any]:
    core.access.bound_class(request.headers)
    raw = await read_body(request, core.max_request_bytes)
    return await asyncio.to_thread(lambda: detokenize(core, loads(raw)))


def tokenize(core: ServingCore, body: object) -> dict[str, Any]:
    request = validate_body(TokenizeRequest, body)
    core.check_model(request.model)
    if (request.prompt is None) == (request.messages is None):
        raise bad_request("give exactly one of 'prompt' and 'messages'", "prompt")
    if request.prompt is not None:
        add = request.add_special_tokens is not False
        tokens = core.tokenizer.encode(request.prompt, add)
    else:
        chat = ChatInput(
            parse_messages(request.messages),
            request.chat_template,
            dict(request.chat_template_kwargs or {}),
            request.add_generation_prompt is not False,
        )
        tokens = core.encode_chat(chat, bool(request.add_special_tokens))
    result: dict[str, Any] = {
        "count": len(tokens),
        "max_model_len": core.pool.max_context_len,
        "tokens": tokens,
    }
    if request.return_token_strs:
        result["token_strs"] = [core.tokenizer.decode([t], False) for t in tokens]
    return result


def detokenize(core: ServingCore, body: object) -> dict[str, Any]:
    request = validate_body(DetokenizeRequest, body)
    core.check_model(request.model)
    core.check_token_ids(request.tokens, "tokens")
    return {"prompt": core.tokenizer.decode(request.tokens)}
