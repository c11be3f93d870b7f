"""The HTTP API (FastAPI): OpenAI's completions and chat completions, streaming (SSE) or not
(served by `generation`), plus /v1/models, vLLM's /tokenize, /detokenize, /version and /ping,
/health, /metrics and /debug endpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from hyperflexis import __version__
from hyperflexis.backends.local import InstanceHandle
from hyperflexis.server import tokenize
from hyperflexis.server.core import ServingCore
from hyperflexis.server.elastic import LiveScaler
from hyperflexis.server.errors import APIError, bad_request
from hyperflexis.server.generation import generate
from hyperflexis.server.health import health_report
from hyperflexis.server.protocol import parse_chat, parse_completion
from hyperflexis.transfer.per_link import link_transport

logger = logging.getLogger(__name__)


def internal_error(exc: Exception) -> JSONResponse:
    """A bug, not the client's fault: log it, answer in OpenAI's shape, keep serving."""
    logger.error("internal error while serving a request", exc_info=exc)
    error = APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
    return JSONResponse(error.body(), status_code=500)


class _GuardedRoute(APIRoute):
    """Turns a route's unexpected exception into the 500 above inside the route. Starlette's
    catch-all handler would answer too, but then re-raise, and uvicorn drops the connection:
    the client's next request on it would fail."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (APIError, StarletteHTTPException, RequestValidationError):
                raise  # answered by the handlers below
            except Exception as exc:
                return internal_error(exc)

        return guarded


def create_app(core: ServingCore, elastic: LiveScaler | None = None) -> FastAPI:
    app = FastAPI(title="HyperFlexis", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.route_class = _GuardedRoute

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return internal_error(exc)  # outside a route (middleware); the connection then closes

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), code=None)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(core, request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(core, request, parse_chat)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        core.access.bound_class(request.headers)
        model = {
            "id": core.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "hyperflexis",
            "root": core.model_root,  # vLLM's: the checkpoint the served name stands for
            "parent": None,
            "max_model_len": core.pool.max_context_len,
        }
        return {"object": "list", "data": [model]}

    @app.post("/tokenize")
    async def tokenize_route(request: Request) -> dict[str, Any]:
        return await tokenize.tokenize_route(core, request)

    @app.post("/detokenize")
    async def detokenize_route(request: Request) -> dict[str, Any]:
        return await tokenize.detokenize_route(core, request)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        # vLLM's (SageMaker's) liveness probe: 200 while an instance serves, like /health.
        return Response(status_code=health_report(core)[0])

    @app.get("/health")
    async def health() -> JSONResponse:
        # 200 while it serves ("ok", or "degraded" with capacity missing); 503 when down or
        # draining: what a load balancer acts on (server/health.py).
        status, body = health_report(core)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        core.access.check_metrics(request.headers)
        core.metrics.charge_instances(time.monotonic(), core.pool.handles.values())
        body, content_type = core.metrics.render(core.num_queued, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/debug/instances")
    async def debug_instances(request: Request) -> list[dict[str, Any]]:
        # No PIDs: a client has no business signalling processes (tests walk /proc instead).
        core.access.bound_class(request.headers)
        rows = []
        for handle in core.pool.handles.values():
            snapshot = handle.snapshot
            described = core.handoff.describe(handle.instance_id)  # role, P/D links
            rows.append(
                {
                    "instance_id": handle.instance_id,
                    **described,
                    "kv_links": _kv_links(core, handle, described.get("linked")),
                    "where": handle.process.describe(),  # backend, node
                    "alive": handle.alive,
                    "state": _state(handle, elastic),
                    "flip_s": None if elastic is None else elastic.flip_s.get(handle.instance_id),
                    "num_restarts": handle.num_restarts,
                    "num_dispatched": handle.num_dispatched,
                    "num_running": None if snapshot is None else snapshot.num_running,
                    "num_waiting": None if snapshot is None else snapshot.num_waiting,
                    "num_blocks": None if snapshot is None else snapshot.num_blocks,
                    "num_free_blocks": None if snapshot is None else snapshot.num_free_blocks,
                    "num_preemptions": handle.num_preemptions,
                    "num_rejections": handle.num_rejections,
                    "correction_factor": handle.correction_factor,
                    "step_ratio_moments": handle.step_ratio_moments,
                    "step_fit_moments": handle.step_fit_moments,
                    **({} if handle.ready is None else handle.ready.start_info()),
                }
            )
        return rows

    @app.post("/debug/scale")
    async def debug_scale(request: Request) -> dict[str, Any]:
        # Tests script scaling decisions through the same path as the scaler's (serve --scaler).
        core.access.bound_class(request.headers)
        if elastic is None:
            raise bad_request("the server runs no --scaler")
        scripted = elastic.scripted(await request.json(), elastic.now())
        try:
            elastic.apply(
                scripted.decision,
                elastic.now(),
                scripted.drain_deadline_s,
                switch_hang_s=scripted.switch_hang_s,
            )
        except RuntimeError as error:  # not possible now: an id in use, below the minimum
            raise bad_request(str(error)) from None
        return {"events": elastic.events}

    @app.get("/debug/scaling")
    async def debug_scaling(request: Request) -> dict[str, Any]:
        core.access.bound_class(request.headers)
        if elastic is None:
            return {"events": [], "num_migrations": 0}
        migrations = core.handoff.controller.num_migrations
        startup = elastic.startup_predictions()
        return {"events": elastic.events, "num_migrations": migrations, "startup": startup}

    @app.get("/debug/stats")
    async def debug_stats(request: Request) -> dict[str, Any]:
        core.access.bound_class(request.headers)
        return {
            "num_open_requests": len(core.streams),
            "num_queued": core.num_queued,
            "server_overhead_ms": core.metrics.overhead_quantiles_ms(),
        }

    return app


def _kv_links(core: ServingCore, handle: InstanceHandle, linked: object) -> dict[str, str]:
    """Per P/D link of the instance: the KV transport its blocks take (`auto` picks per link)."""
    mine = None if handle.ready is None else handle.ready.kv_pool
    links = {}
    for peer_id in linked if isinstance(linked, list) else []:
        peer = core.pool.handles.get(peer_id)
        theirs = None if peer is None or peer.ready is None else peer.ready.kv_pool
        if mine is None or theirs is None:
            continue
        prefill_pool, decode_pool = (mine, theirs) if handle.role == "prefill" else (theirs, mine)
        links[peer_id] = link_transport(decode_pool, prefill_pool)  # D reads from P
    return links


def _state(handle: InstanceHandle, elastic: LiveScaler | None) -> str:
    """Its life: starting, active, draining (scaling); a fixed instance: active or starting."""
    state = None if elastic is None else elastic.state_of(handle.instance_id)
    if state is not None:
        return state
    return "active" if handle.alive else "starting"
