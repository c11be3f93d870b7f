"""Open-loop load client for any OpenAI-compatible server (`hyperflexis bench`).

Each request of a `Workload` is sent at its arrival time, whether or not earlier ones have
finished (open loop: a slow server faces the load it would in production, it does not slow the
load down). Requests stream (SSE), and the client measures on its own clock, per request, when it
was sent, when the first output arrived, the gaps between chunks and when the stream ended. Each
request carries its SLO both as body fields (`priority`, `slo_class`, `ttft_ms`, `tpot_ms`) and
as headers (`x-priority`, ...), so servers that read either see it, and asks for exactly
`output_len` tokens (`max_tokens` with `ignore_eos`, vLLM's extension). A 503 is a rejection
(admission control), anything else that goes wrong is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from hyperflexis.bench.client_stream import RequestResult, ResponseStream, float_or_none
from hyperflexis.bench.metrics import RequestRecord
from hyperflexis.bench.prompts import PromptFactory
from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads.spec import RequestSpec, Workload

Endpoint = Literal["completions", "chat"]
ENDPOINTS: tuple[Endpoint, ...] = ("completions", "chat")
_PATHS: dict[Endpoint, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# A HyperFlexis server's own time on the request before an instance got it; others lack it.
OVERHEAD_HEADER = "x-hyperflexis-server-overhead-ms"
INSTANCE_HEADER = "x-hyperflexis-instance"  # the instance a HyperFlexis server sent it to


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how to send requests."""

    base_url: str  # server root, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)
    model: str  # the `model` field of every request
    endpoint: Endpoint = "completions"
    api_key: str | None = None  # sent as `Authorization: Bearer ...` when given
    max_concurrency: int | None = None  # most requests in flight; None: no limit (pure open loop)
    timeout_s: float = 600.0  # per request, from send to end of stream; then it failed
    ignore_eos: bool = True  # ask for exactly max_tokens (servers that do not know it ignore it)
    show_progress: bool = True  # tqdm bar on stderr

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"invalid parameter 'base_url': expected http(s)://..., got {self.base_url!r}"
            )
        if not self.model:
            raise ValueError("invalid parameter 'model': empty")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(
                f"invalid parameter 'endpoint': expected one of {ENDPOINTS}, got {self.endpoint!r}"
            )
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(
                f"invalid parameter 'max_concurrency': expected >= 1, got {self.max_concurrency}"
            )
        if not self.timeout_s > 0:
            raise ValueError(f"invalid parameter 'timeout_s': expected > 0, got {self.timeout_s}")

    @property
    def root_url(self) -> str:
        root = self.base_url.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root


@dataclass(frozen=True, slots=True)
class BenchRun:
    """A finished run: one result per offered request, in workload order."""

    results: tuple[RequestResult, ...]
    duration_s: float  # from the first scheduled send to the last request's end
    wall_s: float  # the whole run, prompt building and connection setup included
    config: ClientConfig

    @property
    def records(self) -> list[RequestRecord]:
        return [r.record for r in self.results]


def run_benchmark(
    workload: Workload,
    classes: SLOClasses,
    config: ClientConfig,
    prompts: PromptFactory | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    at_start: Callable[[], object] | None = None,
) -> BenchRun:
    """Replay `workload` against the server in `config` and wait for every request to end.
    `transport` replaces the network (tests pass an `httpx.MockTransport`); `at_start` is
    called once just before the run's clock starts (prompts built, connection warm), e.g. to
    read the server's counters."""
    return asyncio.run(run_benchmark_async(workload, classes, config, prompts, transport, at_start))


async def run_benchmark_async(
    workload: Workload,
    classes: SLOClasses,
    config: ClientConfig,
    prompts: PromptFactory | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    at_start: Callable[[], object] | None = None,
) -> BenchRun:
    """As `run_benchmark`, inside a running event loop."""
    wall_start = time.perf_counter()
    if not workload:
        raise ValueError("invalid parameter 'workload': no requests")
    for spec in workload:
        classes[spec.slo_class]  # unknown class names fail before anything is sent
    factory = prompts or PromptFactory()
    # Built up front, so that building a prompt never delays a send.
    built = [factory.make(spec.prompt_len, offset=i) for i, spec in enumerate(workload)]
    limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=None)
    timeout = httpx.Timeout(config.timeout_s)
    semaphore = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    progress = _progress(len(workload), config.show_progress)
    async with httpx.AsyncClient(
        base_url=config.root_url, limits=limits, timeout=timeout, transport=transport
    ) as client:
        await _warm_up(client)
        if at_start is not None:
            at_start()
        start = time.perf_counter()
        tasks: list[asyncio.Task[RequestResult]] = []
        for spec, (prompt, prompt_tokens) in zip(workload, built, strict=True):
            delay_s = start + spec.arrival_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            sender = _Sender(client, config, classes, start, semaphore)
            task = asyncio.create_task(sender.send(spec, prompt, prompt_tokens))
            task.add_done_callback(lambda _: progress.update(1))
            tasks.append(task)
        results = await asyncio.gather(*tasks)
    progress.close()
    ends = [r.record.finish_s for r in results if r.record.finish_s is not None]
    duration_s = max([*ends, workload[-1].arrival_s, 1e-9])
    return BenchRun(tuple(results), duration_s, time.perf_counter() - wall_start, config)


def request_body(
    spec: RequestSpec, prompt: str, classes: SLOClasses, config: ClientConfig
) -> dict[str, Any]:
    """The JSON body of one streaming request, SLO fields included."""
    slo = classes[spec.slo_class]
    body: dict[str, Any] = {
        "model": config.model,
        "max_tokens": spec.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "priority": slo.priority,
        "slo_class": slo.name,
        "ttft_ms": slo.ttft_s * 1e3,
        "tpot_ms": slo.tpot_s * 1e3,
    }
    if config.ignore_eos:
        body["ignore_eos"] = True
    if config.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def request_headers(spec: RequestSpec, classes: SLOClasses, config: ClientConfig) -> dict[str, str]:
    """The SLO headers of one request, plus authorisation when an API key is set."""
    slo = classes[spec.slo_class]
    headers = {
        "x-priority": str(slo.priority),
        "x-slo-class": slo.name,
        "x-slo-ttft-ms": _number(slo.ttft_s * 1e3),
        "x-slo-tpot-ms": _number(slo.tpot_s * 1e3),
    }
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


class _Sender:
    """Sends one request and turns its stream into a `RequestResult`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        config: ClientConfig,
        classes: SLOClasses,
        start: float,
        semaphore: asyncio.Semaphore | None,
    ) -> None:
        self._client = client
        self._config = config
        self._classes = classes
        self._start = start
        self._semaphore = semaphore

    async def send(self, spec: RequestSpec, prompt: str, prompt_tokens: int) -> RequestResult:
        if self._semaphore is None:
            return await self._send(spec, prompt, prompt_tokens)
        async with self._semaphore:
            return await self._send(spec, prompt, prompt_tokens)

    async def _send(self, spec: RequestSpec, prompt: str, prompt_tokens: int) -> RequestResult:
        stream = ResponseStream(self._config.endpoint == "chat", self._clock)
        stream.sent_s = self._clock()
        try:
            await asyncio.wait_for(self._stream(spec, prompt, stream), self._config.timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            stream.fail(f"timed out after {self._config.timeout_s:g} s")
        except httpx.HTTPError as exc:
            stream.fail(f"{type(exc).__name__}: {exc}")
        return stream.result(spec, self._classes, prompt_tokens)

    async def _stream(self, spec: RequestSpec, prompt: str, stream: ResponseStream) -> None:
        body = request_body(spec, prompt, self._classes, self._config)
        headers = request_headers(spec, self._classes, self._config)
        path = _PATHS[self._config.endpoint]
        async with self._client.stream("POST", path, json=body, headers=headers) as response:
            stream.http_status = response.status_code
            stream.server_overhead_ms = float_or_none(response.headers.get(OVERHEAD_HEADER))
            stream.instance = response.headers.get(INSTANCE_HEADER)
            if response.status_code != 200:
                await response.aread()
                stream.http_error(response)
                return
            async for line in response.aiter_lines():
                if not stream.feed(line):
                    break
        stream.finish()

    def _clock(self) -> float:
        return time.perf_counter() - self._start


async def _warm_up(client: httpx.AsyncClient) -> None:
    """One request before the clock starts (`GET /v1/models`, in the OpenAI API), so the first
    measured request does not pay the client's one-off setup (imports, first connection)."""
    with contextlib.suppress(httpx.HTTPError):
        await client.get("/v1/models", timeout=10.0)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="requests", unit="req", file=sys.stderr, disable=not enabled)


def _number(value: float) -> str:
    return f"{value:g}"


__all__ = [
    "ENDPOINTS",
    "INSTANCE_HEADER",
    "OVERHEAD_HEADER",
    "BenchRun",
    "ClientConfig",
    "Endpoint",
    "RequestResult",
    "request_body",
    "request_headers",
    "run_benchmark",
    "run_benchmark_async",
]
