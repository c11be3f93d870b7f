"""Serving one completions or chat request: its prompts' samples run as separate requests (one
`RequestStream` each, all on one queue) and come back as the choices of one response, whole or
streamed.

A request is answered only once the first event of every sample is known (a token, or a
rejection), so a late rejection by an instance is still a proper 503 rather than an error
inside a 200 stream. The request watches for its client going away, and an abandoned request
is aborted in its instances.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hyperflexis.backends.messages import OutputDelta
from hyperflexis.core.slo import SLOClass
from hyperflexis.server import responses
from hyperflexis.server.body import loads, read_body
from hyperflexis.server.core import DISCONNECTED, Plan, RequestStream, ServingCore
from hyperflexis.server.errors import APIError, bad_request, overloaded
from hyperflexis.server.protocol import GenerationJob

Parser = Callable[[object, Mapping[str, str]], GenerationJob]
OVERHEAD_HEADER = "x-hyperflexis-server-overhead-ms"
INSTANCE_HEADER = "x-hyperflexis-instance"  # where the dispatcher sent it (the first sample)
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it


@dataclass(slots=True)
class _Choice:
    """One sample's part of the response."""

    stream: RequestStream
    index: int  # prompt index * n + sample index, as OpenAI and vLLM number choices
    prefix: str  # echo: the prompt's text
    logprobs: responses.ChoiceLogprobs | None
    parts: list[str] = field(default_factory=list)
    reason: str | None = None
    num_output_tokens: int = 0

    def add(self, delta: OutputDelta) -> None:
        self.parts.append(delta.text)
        self.num_output_tokens = delta.num_output_tokens
        if self.logprobs is not None and delta.prompt_logprobs:
            self.logprobs.add_prompt(self.stream.prompt_token_ids, delta.prompt_logprobs)
        if self.logprobs is not None and delta.logprobs:
            self.logprobs.add(delta.token_ids, delta.logprobs)
        if delta.finished:
            self.reason = responses.finish_reason(delta.finish_reason)


async def generate(core: ServingCore, request: Request, parse: Parser) -> Response:
    start = time.perf_counter()
    arrival_s = time.monotonic()
    bound = core.access.bound_class(request.headers)
    raw = await read_body(request, core.max_request_bytes)
    # JSON, validation and tokenisation in a worker thread: a big body cannot stall /health
    # or the other clients' streams; only dispatch (shared state) runs on the event loop.
    job, plan = await asyncio.to_thread(_plan, core, parse, raw, request.headers, bound)
    streams = core.start(job, plan, arrival_s)
    timer = _start_timer(core, streams, arrival_s)
    overhead_s = time.perf_counter() - start
    core.metrics.observe_overhead(overhead_s)
    headers = {
        OVERHEAD_HEADER: f"{overhead_s * 1000:.3f}",
        "x-slo-class": streams[0].slo.class_name,
        INSTANCE_HEADER: streams[0].instance_id,
    }
    choices = _choices(core, job, streams)
    queue = streams[0].queue
    task = asyncio.ensure_future(_watch_disconnect(request, queue))
    watcher: asyncio.Task[None] | None = task
    try:
        early = await _first_events(choices, queue)
        if early is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if job.stream:
            chunks = _stream(core, job, choices, early, task, timer)
            watcher = None  # the stream owns it now
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        full = await _collect(core, job, choices, early)
        if full is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(full, headers=headers)
    finally:
        if watcher is not None:
            watcher.cancel()
            if timer is not None:
                timer.cancel()
            for stream in streams:
                core.abort(stream)  # no-op once finished


def _start_timer(
    core: ServingCore, streams: list[RequestStream], arrival_s: float
) -> asyncio.TimerHandle | None:
    """Ends the request's streams with a 503 (error event in a stream) at its timeout."""
    timeout_s = core.request_timeout_s
    if timeout_s is None:
        return None
    message = f"the request did not complete within the server's timeout of {timeout_s:g} s"
    delay_s = max(0.0, arrival_s + timeout_s - time.monotonic())
    return asyncio.get_running_loop().call_later(delay_s, core.fail, streams, message, 503)


def _plan(
    core: ServingCore,
    parse: Parser,
    raw: bytes,
    headers: Mapping[str, str],
    bound: SLOClass | None,
) -> tuple[GenerationJob, Plan]:
    job = parse(loads(raw), headers)
    return job, core.plan(job, bound)


def _choices(core: ServingCore, job: GenerationJob, streams: list[RequestStream]) -> list[_Choice]:
    choices = []
    for index, stream in enumerate(streams):
        prefix = ""
        if job.echo:
            prompt = job.prompts[stream.prompt_index]
            prefix = (
                prompt.text
                if prompt.text is not None
                else core.tokenizer.decode(stream.prompt_token_ids)
            )
        logprobs = None
        if job.num_top_logprobs is not None:
            logprobs = responses.ChoiceLogprobs(
                job.kind, job.num_top_logprobs, _token_text(core), text_offset=len(prefix)
            )
        choices.append(_Choice(stream, index, prefix, logprobs))
    return choices


def _token_text(core: ServingCore) -> responses.TokenText:
    tokenizer = core.tokenizer
    return lambda token_id: tokenizer.decode([token_id], False)


async def _first_events(
    choices: list[_Choice], queue: asyncio.Queue[OutputDelta]
) -> list[OutputDelta] | None:
    """Wait until every sample has its first event; the deltas so far, None if the client left.
    Raises the 503 or 400 of a sample that failed before its first token."""
    waiting = {c.stream.request_id for c in choices}
    early: list[OutputDelta] = []
    while waiting:
        delta = await queue.get()
        if delta is DISCONNECTED:
            return None
        _raise_if_failed_before_output(delta)
        waiting.discard(delta.request_id)
        early.append(delta)
    return early


def _raise_if_failed_before_output(delta: OutputDelta) -> None:
    if delta.token_ids or delta.finish_reason in (None, "stop", "length"):
        return
    if delta.finish_reason == "rejected":
        raise overloaded("the instance could no longer meet this request's SLO")
    raise _error(delta)


def _error(delta: OutputDelta) -> APIError:
    """A failed request's answer: 400, 503 with Retry-After (timed out, lost its instance,
    shutdown), or 500."""
    message = delta.error or f"request ended: {delta.finish_reason}"
    if delta.error_status == 400:
        return bad_request(message)
    if delta.error_status == 503:
        return overloaded(message, "unavailable")
    return APIError(delta.error_status, message, type="server_error")


async def _watch_disconnect(request: Request, queue: asyncio.Queue[OutputDelta]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(DISCONNECTED)
            return


async def _deltas(
    choices: list[_Choice], early: list[OutputDelta], queue: asyncio.Queue[OutputDelta]
) -> AsyncIterator[tuple[_Choice, OutputDelta] | None]:
    """Every sample's deltas, `early` first, until all finished; None when the client left."""
    by_id = {c.stream.request_id: c for c in choices}
    num_open = len(choices)
    pending = list(early)
    while num_open:
        delta = pending.pop(0) if pending else await queue.get()
        if delta is DISCONNECTED:
            yield None
            return
        choice = by_id[delta.request_id]
        if delta.finished:
            num_open -= 1
        yield choice, delta


def _usage(choices: list[_Choice]) -> tuple[int, int]:
    """Prompt tokens once per prompt (as vLLM counts them), completion tokens of every choice."""
    prompts = {c.stream.prompt_index: c.stream.num_prompt_tokens for c in choices}
    return sum(prompts.values()), sum(c.num_output_tokens for c in choices)


async def _collect(
    core: ServingCore, job: GenerationJob, choices: list[_Choice], early: list[OutputDelta]
) -> dict[str, Any] | None:
    """The whole response body; None if the client went away first."""
    async for item in _deltas(choices, early, choices[0].stream.queue):
        if item is None:
            return None
        choice, delta = item
        if delta.finish_reason == "error":
            raise _error(delta)
        choice.add(delta)
    bodies = [
        responses.choice(
            job.kind,
            c.index,
            c.prefix + "".join(c.parts),
            c.reason,
            None if c.logprobs is None else c.logprobs.body(),
        )
        for c in choices
    ]
    num_prompt, num_completion = _usage(choices)
    return responses.full_response(
        job.kind,
        choices[0].stream.request_id,
        int(time.time()),
        core.model_name,
        bodies,
        num_prompt,
        num_completion,
    )


async def _stream(
    core: ServingCore,
    job: GenerationJob,
    choices: list[_Choice],
    early: list[OutputDelta],
    watcher: asyncio.Future[None],
    timer: asyncio.TimerHandle | None,
) -> AsyncIterator[str]:
    response_id = choices[0].stream.request_id
    chunk_args = (job.kind, response_id, int(time.time()), core.model_name)
    include_usage = job.include_usage
    try:
        for c in choices:
            if job.kind == "chat":
                chunk = responses.stream_chunk(
                    *chunk_args, "", None, include_usage, index=c.index, first=True
                )
                yield _event(chunk)
            elif c.prefix:
                yield _event(
                    responses.stream_chunk(
                        *chunk_args, c.prefix, None, include_usage, index=c.index
                    )
                )
        async for item in _deltas(choices, early, choices[0].stream.queue):
            if item is None:
                return
            choice, delta = item
            if delta.finish_reason == "error":
                yield _event(_error(delta).body())
                break
            choice.add(delta)
            logprobs = None if choice.logprobs is None else choice.logprobs.take()
            if delta.text or (logprobs is not None and delta.token_ids):
                text = delta.text if delta.text or job.kind == "completion" else None
                yield _event(
                    responses.stream_chunk(
                        *chunk_args,
                        text,
                        None,
                        include_usage,
                        index=choice.index,
                        logprobs=logprobs,
                    )
                )
            if choice.reason is not None:
                yield _event(
                    responses.stream_chunk(
                        *chunk_args, None, choice.reason, include_usage, index=choice.index
                    )
                )
        else:
            if include_usage:
                yield _event(responses.usage_chunk(*chunk_args, *_usage(choices)))
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        if timer is not None:
            timer.cancel()
        for c in choices:
            core.abort(c.stream)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
