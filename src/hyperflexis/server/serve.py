"""Starts and stops a whole server: the step profile, the instance processes, the HTTP API.

The readiness line `HyperFlexis serving on http://HOST:PORT` is printed (and flushed) only once
every instance is ready and the socket listens. Ctrl-C or SIGTERM drain the API (`drain`), then
stop every instance process (asked first, then terminated, then killed). Log lines (faults,
recoveries, the drain) go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from hyperflexis.server.config import ServerConfig

if TYPE_CHECKING:
    from hyperflexis.backends.base import Backend
    from hyperflexis.perf import StepCostModel
    from hyperflexis.scheduler.config import Role
    from hyperflexis.server.core import ServingCore
    from hyperflexis.server.elastic import LiveScaler

READY_LINE = "HyperFlexis serving on http://{host}:{port}"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stop(Exception):
    """SIGTERM, turned into an exception so cleanup code runs."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def serve(config: ServerConfig) -> int:
    from hyperflexis.backends.local import InstancePool, specs_for_roles
    from hyperflexis.cluster import make_dispatcher
    from hyperflexis.core.slo import SLOClasses
    from hyperflexis.engine import Tokenizer, default_model_path
    from hyperflexis.engine.config import resolve_dtype_name
    from hyperflexis.engine.factory import InstanceSpec
    from hyperflexis.scheduler import policy_class
    from hyperflexis.server.access import Access
    from hyperflexis.server.app import create_app
    from hyperflexis.server.core import ServingCore
    from hyperflexis.server.cost_model import SharedCorrection, load_or_profile

    policy_class(config.policy)  # unknown names fail before anything starts
    if config.backend == "ray":
        from hyperflexis.backends.registry import require_ray

        require_ray()
    slo_classes = (
        SLOClasses.from_file(config.slo_classes_path)
        if config.slo_classes_path is not None
        else SLOClasses()
    )
    if config.model is not None and not Path(config.model).is_dir():
        raise ValueError(f"invalid '--model': {config.model} is not a checkpoint folder")
    model_path = Path(config.model) if config.model is not None else default_model_path()
    tokenizer = Tokenizer.from_dir(config.tokenizer or model_path)
    if config.chat_template is not None:
        tokenizer.chat_template = _chat_template(config.chat_template)
    dtype = resolve_dtype_name(config.dtype, model_path, config.device)
    if tokenizer.chat_template is not None:
        # Compile the template now, not inside the first chat request's latency.
        tokenizer.encode_chat([{"role": "user", "content": "warm-up"}])
    profiled = load_or_profile(
        model_path, config.device, dtype, config.kv_cache_bytes, config.profile_path
    )
    shared = SharedCorrection(profiled)
    dispatcher = make_dispatcher(
        config.dispatch, shared, config.scheduler, config.scheduler.admission_control
    )
    base = InstanceSpec(
        instance_id="",
        model=str(model_path),
        policy=config.policy,
        scheduler_config=config.scheduler,
        cost_model=profiled,
        dtype=dtype,
        device=config.device,
        kv_cache_bytes=config.kv_cache_bytes,
        block_size=config.block_size,
        seed=config.seed,
        num_threads=config.num_threads,
        tokenizer=config.tokenizer,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_transport=config.kv_transport,
        publish_weights=config.peer_weights,
        kv_pool_always=config.scaler is not None,  # a drain migrates decodes, KV and all
    )
    specs = specs_for_roles(base, config.instance_roles())
    names = config.served_model_names or (model_path.name,)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    pool = InstancePool(specs, _backend(config))
    try:
        pool.start(config.ready_timeout_s)
        core = ServingCore(
            pool,
            dispatcher,
            tokenizer,
            Access(slo_classes, config.api_key, metrics_require_key=config.metrics_require_key),
            names[0],
            model_aliases=(*names[1:], str(model_path)),
            model_root=str(model_path),
            max_queued=config.max_queued,
            max_queued_per_instance=config.scheduler.max_num_seqs,
            max_request_bytes=config.max_request_bytes,
            request_timeout_s=config.request_timeout_s,
            shared_correction=shared,
            link_policy=config.link_policy,
            price_per_hour=config.price_per_hour,
        )
        elastic = _live_scaler(config, core, shared)
        asyncio.run(_serve_http(config, core, create_app(core, elastic), elastic))
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        pool.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _backend(config: ServerConfig) -> Backend:
    """`--backend`'s; ValueError (exit 2) for `ray` without Ray installed."""
    from hyperflexis.backends.registry import create_backend

    if config.backend != "ray":
        return create_backend(config.backend)
    try:
        return create_backend("ray", address=config.ray_address, placement=config.ray_resources)
    except ConnectionError as exc:  # no cluster there
        raise RuntimeError(
            f"ray: cannot reach the cluster at {config.ray_address}: {exc}"
        ) from None


def _chat_template(value: str) -> str:
    """vLLM's --chat-template: a file holding the template, or the template itself."""
    path = Path(value)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"invalid '--chat-template': {value} is neither a file nor a template")


def _live_scaler(
    config: ServerConfig, core: ServingCore, cost_model: StepCostModel
) -> LiveScaler | None:
    """`--scaler`'s control loop, or None. The scaler sizes capacity with the server's
    profiled step cost model scaled by the instances' measured correction (the dispatcher's
    `SharedCorrection`); the hardware and model specs only feed its start-up estimates until
    the first scale-out's start is measured (`LiveScaler.on_ready`)."""
    from hyperflexis.cluster.scaler import PoolLimits, ScalerContext, make_scaler
    from hyperflexis.server.elastic import LiveScaler

    if config.scaler is None:
        return None
    first = next(h.snapshot for h in core.pool.handles.values() if h.snapshot is not None)
    context = ScalerContext.of(
        "h100",
        "llama-3.1-8b",
        cost_model,
        scheduler_config=config.scheduler,
        kv_cache_tokens=first.num_blocks * first.block_size,
        peer_weights=config.peer_weights,
    )
    limits = PoolLimits(config.min_instances, config.max_instances)
    scaler = make_scaler(config.scaler, context)
    roles: tuple[Role, ...] = ("prefill", "decode") if config.is_disaggregated else ("mixed",)
    return LiveScaler(
        core,
        scaler,
        dict.fromkeys(roles, limits),
        config.control_interval_s,
        drain_deadline_s=config.drain_deadline_s,
        link_policy=config.link_policy,
    )


async def _serve_http(
    config: ServerConfig, core: object, app: object, elastic: LiveScaler | None = None
) -> None:
    import uvicorn

    from hyperflexis.backends.local import InstanceHandle
    from hyperflexis.server.core import ServingCore
    from hyperflexis.server.drain import DrainingServer
    from hyperflexis.server.health import RestartBudget, Supervisor

    assert isinstance(core, ServingCore)
    server = DrainingServer(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=config.graceful_shutdown_s,
        ),
        core,
        config.shutdown_timeout_s,
    )
    supervisor = Supervisor(
        core,
        config.instance_timeout_s,
        RestartBudget(config.max_restarts, config.restart_window_s),
        start_timeout_s=config.start_timeout_s,
    )
    loop = asyncio.get_running_loop()
    on_ready = supervisor.on_ready
    if elastic is not None:
        scaling = elastic
        supervisor.scaling = elastic  # its new instances' starts are timed too

        def on_ready(handle: InstanceHandle) -> None:
            supervisor.on_ready(handle)  # up in the controller: it takes traffic
            scaling.on_ready(handle)

    core.pool.attach(loop, core.on_report, supervisor.on_exit, on_ready)
    watch = asyncio.create_task(supervisor.watch())
    control = asyncio.create_task(elastic.run()) if elastic is not None else None
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        print(READY_LINE.format(host=config.host, port=port), flush=True)
    try:
        await task
    finally:
        watch.cancel()
        if control is not None:
            control.cancel()
        core.draining = True  # an instance stopping from here on is not a fault
        core.fail_all("the server is shutting down")
