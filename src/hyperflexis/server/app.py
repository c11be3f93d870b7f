"""The HTTP API (FastAPI): OpenAI's completions and chat completions, streaming (SSE) or not,
plus /v1/models, /health, /metrics and /debug endpoints.

A request is answered only once its first event is known (a token, or a rejection), so a late
rejection by an instance is still a proper 503 rather than an error inside a 200 stream. Every
request watches for its client going away, and an abandoned request is aborted in its instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hyperflexis.backends.messages import OutputDelta
from hyperflexis.server import responses
from hyperflexis.server.core import DISCONNECTED, RequestStream, ServingCore
from hyperflexis.server.errors import APIError, bad_request, overloaded
from hyperflexis.server.protocol import GenerationJob, parse_chat, parse_completion

logger = logging.getLogger(__name__)
Parser = Callable[[object, Mapping[str, str]], GenerationJob]
OVERHEAD_HEADER = "x-hyperflexis-server-overhead-ms"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it


def create_app(core: ServingCore) -> FastAPI:
    app = FastAPI(title="HyperFlexis", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: log it, answer in OpenAI's shape, keep serving.
        logger.exception("internal error while serving a request")
        error = APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), code=None)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(core, request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(core, request, parse_chat)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        core.access.bound_class(request.headers)
        return {
            "object": "list",
            "data": [
                {"id": core.model_name, "object": "model", "created": 0, "owned_by": "hyperflexis"}
            ],
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        live = core.pool.live()
        status = 200 if live else 503
        return JSONResponse(
            {"status": "ok" if live else "down", "num_instances": len(live)}, status_code=status
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = core.metrics.render(core.num_queued, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/debug/instances")
    async def debug_instances() -> list[dict[str, Any]]:
        rows = []
        for handle in core.pool.handles.values():
            snapshot = handle.snapshot
            rows.append(
                {
                    "instance_id": handle.instance_id,
                    "pid": None if handle.ready is None else handle.ready.pid,
                    "alive": handle.alive,
                    "num_dispatched": handle.num_dispatched,
                    "num_running": None if snapshot is None else snapshot.num_running,
                    "num_waiting": None if snapshot is None else snapshot.num_waiting,
                    "num_blocks": None if snapshot is None else snapshot.num_blocks,
                    "num_free_blocks": None if snapshot is None else snapshot.num_free_blocks,
                    "num_preemptions": handle.num_preemptions,
                    "num_rejections": handle.num_rejections,
                    "correction_factor": handle.correction_factor,
                }
            )
        return rows

    @app.get("/debug/stats")
    async def debug_stats() -> dict[str, Any]:
        return {
            "num_open_requests": len(core.streams),
            "num_queued": core.num_queued,
            "server_overhead_ms": core.metrics.overhead_quantiles_ms(),
        }

    return app


async def _generate(core: ServingCore, request: Request, parse: Parser) -> Response:
    start = time.perf_counter()
    arrival_s = time.monotonic()
    bound = core.access.bound_class(request.headers)
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and bad UTF-8 alike
        raise bad_request(f"malformed JSON body: {exc}") from None
    job = parse(body, request.headers)
    stream = core.submit(job, bound, arrival_s)
    overhead_s = time.perf_counter() - start
    core.metrics.observe_overhead(overhead_s)
    headers = {OVERHEAD_HEADER: f"{overhead_s * 1000:.3f}", "x-slo-class": stream.slo.class_name}
    task = asyncio.ensure_future(_watch_disconnect(request, stream))
    watcher: asyncio.Task[None] | None = task
    try:
        first = await stream.queue.get()
        if first is DISCONNECTED:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        _raise_if_failed_before_output(first)
        if job.stream:
            chunks = _stream(core, job, stream, first, task)
            watcher = None  # the stream owns it now
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        body = await _collect(core, job, stream, first)
        if body is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(body, headers=headers)
    finally:
        if watcher is not None:
            watcher.cancel()
            core.abort(stream)  # no-op once finished


def _raise_if_failed_before_output(delta: OutputDelta) -> None:
    if delta.token_ids or delta.finish_reason in (None, "stop", "length"):
        return
    if delta.finish_reason == "rejected":
        raise overloaded("the instance could no longer meet this request's SLO")
    message = delta.error or f"request ended: {delta.finish_reason}"
    if delta.error_status == 400:
        raise bad_request(message)
    raise APIError(delta.error_status, message, type="server_error")


async def _watch_disconnect(request: Request, stream: RequestStream) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.queue.put_nowait(DISCONNECTED)
            return


async def _collect(
    core: ServingCore, job: GenerationJob, stream: RequestStream, delta: OutputDelta
) -> dict[str, Any] | None:
    """The whole response body; None if the client went away first."""
    parts = [delta.text]
    while not delta.finished:
        delta = await stream.queue.get()
        if delta is DISCONNECTED:
            return None
        if delta.finish_reason == "error":
            raise APIError(500, delta.error or "request failed", type="server_error")
        parts.append(delta.text)
    return responses.full_response(
        job.kind,
        stream.request_id,
        int(time.time()),
        core.model_name,
        "".join(parts),
        responses.finish_reason(delta.finish_reason),
        stream.num_prompt_tokens,
        delta.num_output_tokens,
    )


async def _stream(
    core: ServingCore,
    job: GenerationJob,
    stream: RequestStream,
    delta: OutputDelta,
    watcher: asyncio.Future[None],
) -> AsyncIterator[str]:
    created = int(time.time())
    model = core.model_name
    kind = job.kind
    include_usage = job.include_usage
    try:
        if kind == "chat":
            chunk = responses.stream_chunk(
                kind, stream.request_id, created, model, "", None, include_usage, first=True
            )
            yield _event(chunk)
        while True:
            if delta is DISCONNECTED:
                return
            if delta.finish_reason == "error":
                error = APIError(500, delta.error or "request failed", type="server_error")
                yield _event(error.body())
                break
            reason = responses.finish_reason(delta.finish_reason)
            if delta.text or reason is not None:
                text = delta.text if delta.text or kind == "completion" else None
                chunk = responses.stream_chunk(
                    kind, stream.request_id, created, model, text, None, include_usage
                )
                if delta.text:
                    yield _event(chunk)
                if reason is not None:
                    final = responses.stream_chunk(
                        kind, stream.request_id, created, model, None, reason, include_usage
                    )
                    yield _event(final)
                    if include_usage:
                        yield _event(
                            responses.usage_chunk(
                                kind,
                                stream.request_id,
                                created,
                                model,
                                stream.num_prompt_tokens,
                                delta.num_output_tokens,
                            )
                        )
                    break
            delta = await stream.queue.get()
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        core.abort(stream)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
