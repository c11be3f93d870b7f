"""Request bodies, bounded: read incrementally up to `--max-request-bytes` (a larger one is
refused with 413 before it is all buffered), parsed as JSON off the event loop's thread by the
caller (`loads` is the blocking part)."""

from __future__ import annotations

import json

from fastapi import Request

from hyperflexis.server.errors import bad_request, too_large


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body; 413 as soon as the declared or received size passes `max_bytes`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    num_bytes = 0
    async for chunk in request.stream():
        num_bytes += len(chunk)
        if num_bytes > max_bytes:  # a chunked or lying client: stop reading here
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def loads(raw: bytes) -> object:
    """The body as JSON; 400 when it is not (bad UTF-8 included), or when a string holds a lone
    UTF-16 surrogate (JSON lets `"\\ud800"` through; no tokenizer takes it). Blocking: run it
    in a thread."""
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise bad_request(f"malformed JSON body: {exc}") from None
    if b"\\u" in raw:  # only an escape can make a surrogate: skip the walk otherwise
        _check_strings(body)
    return body


def _check_strings(body: object) -> None:
    """400 for the first string (key or value) that is not valid Unicode text."""
    pending = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(
                    "malformed JSON body: a string holds a lone UTF-16 surrogate"
                ) from None
