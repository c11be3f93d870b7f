"""Server metrics through `prometheus_client`, in one `CollectorRegistry` per server (several
servers may share a process, as the tests do).

Two families. vLLM's names, meanings and labels for what both systems measure, so that a vLLM
dashboard or alert works unchanged: every series carries `model_name` and, where it belongs to
one instance, `engine` (the instance id; Prometheus keeps `instance` for the scrape target).
HyperFlexis's own `hyperflexis:` series cover what only a multi-SLO server has: attainment per
SLO class, misses by cause, rejections by where, the server's own overhead, the latency model's
correction. docs/metrics.md lists every series.

As in vLLM, TTFT and E2E are measured by the server from arrival to receipt; queue, prefill,
decode and inter-token times are the instance's durations, carried by `OutputDelta`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from hyperflexis.backends.local import InstanceHandle
from hyperflexis.backends.messages import OutputDelta
from hyperflexis.core.slo import SLO

TTFT_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
TOKEN_GAP_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
)  # fmt: skip
REQUEST_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
)  # fmt: skip
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)
NUM_RECENT_OVERHEADS = 10_000  # samples kept for exact quantiles in /debug/stats

ENGINE_LABELS = ("model_name", "engine")
CLASS_LABELS = ("model_name", "slo_class")
# An instance's finished requests, as vLLM's `finished_reason` (plus HyperFlexis's "rejected").
FINISHED_REASONS = ("stop", "length", "abort", "rejected", "error")
# Why a request did not attain its SLO: late first token, slow tokens after it (first token on
# time), turned away, client went away, failed.
MISS_CAUSES = ("ttft", "tpot", "rejected", "aborted", "error")
REJECTED_WHERE = ("dispatch", "instance", "queue")  # no instance fits, late, server queue full


def one_two_five_buckets(max_value: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value`: token-count buckets."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return tuple(buckets)
            buckets.append(float(mantissa * scale))
        scale *= 10


class ServerMetrics:
    """Everything /metrics shows. The serving core records request events and instance reports
    into it; `render` writes the exposition."""

    def __init__(
        self, model_name: str, slo_classes: Iterable[str] = (), max_model_len: int = 4096
    ) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self._define_vllm(one_two_five_buckets(max_model_len))
        self._define_hyperflexis()
        self._engines: set[str] = set()  # instances whose series exist
        self._num_preemptions: dict[str, int] = {}  # the latest total each instance reported
        self.recent_overheads_s: deque[float] = deque(maxlen=NUM_RECENT_OVERHEADS)
        for name in slo_classes:
            self._init_class(name)

    # -- definitions ------------------------------------------------------------------------

    def _histogram(
        self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _define_vllm(self, token_buckets: tuple[float, ...]) -> None:
        histogram, labels = self._histogram, ENGINE_LABELS
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            TTFT_BUCKETS_S,
        )
        self.inter_token = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds, one observation per output token.",
            labels,
            TOKEN_GAP_BUCKETS_S,
        )
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "The same as vllm:inter_token_latency_seconds (vLLM's older name).",
            labels,
            TOKEN_GAP_BUCKETS_S,
        )
        self.request_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of each request's mean time per output token after the first.",
            labels,
            TOKEN_GAP_BUCKETS_S,
        )
        phases = {
            "e2e": ("e2e_request_latency", "end-to-end latency: arrival to the last token"),
            "queue": ("request_queue_time", "queue time: arrival to first scheduled"),
            "prefill": ("request_prefill_time", "prefill time: first scheduled to first token"),
            "decode": ("request_decode_time", "decode time: first token to last token"),
            "inference": ("request_inference_time", "first scheduled to last token"),
        }
        self.phases = {
            key: histogram(
                f"vllm:{name}_seconds", f"Request {doc}, seconds.", labels, REQUEST_BUCKETS_S
            )
            for key, (name, doc) in phases.items()
        }
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per request.", labels, token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Output tokens per request.", labels, token_buckets
        )
        self.request_max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Output tokens of a request's longest sequence.",
            labels,
            token_buckets,
        )
        self._define_vllm_counters_and_gauges()

    def _define_vllm_counters_and_gauges(self) -> None:
        registry, labels = self.registry, ENGINE_LABELS
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefilled prompt tokens.", labels, registry=registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", labels, registry=registry
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests, by finished_reason.",
            (*labels, "finished_reason"),
            registry=registry,
        )
        self.preemptions = Counter(
            "vllm:num_preemptions",
            "Preemptions (KV freed, recomputed later).",
            labels,
            registry=registry,
        )
        gauges = {
            "running": ("vllm:num_requests_running", "Requests holding KV blocks."),
            "waiting": ("vllm:num_requests_waiting", "Requests waiting for prefill or a retry."),
            "kv": ("vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (0 to 1)."),
            "gpu_kv": ("vllm:gpu_cache_usage_perc", "The same as vllm:kv_cache_usage_perc."),
            "up": ("hyperflexis:instance_up", "1 while the instance serves."),
            "correction": (
                "hyperflexis:instance_correction_factor",
                "Measured over predicted step time (online latency correction).",
            ),
        }
        self.instance_gauges = {
            key: Gauge(name, doc, labels, registry=registry) for key, (name, doc) in gauges.items()
        }

    def _define_hyperflexis(self) -> None:
        registry, labels = self.registry, CLASS_LABELS
        self.class_ttft = self._histogram(
            "hyperflexis:time_to_first_token_seconds",
            "Time to first token from arrival at the server, per SLO class.",
            labels,
            TTFT_BUCKETS_S,
        )
        self.class_tpot = self._histogram(
            "hyperflexis:time_per_output_token_seconds",
            "Each finished request's mean time per output token after the first, per SLO "
            "class (what its TPOT target is judged on).",
            labels,
            TOKEN_GAP_BUCKETS_S,
        )
        self.attained = Counter(
            "hyperflexis:requests_attained",
            "Requests that completed within their TTFT and TPOT targets.",
            labels,
            registry=registry,
        )
        self.missed = Counter(
            "hyperflexis:requests_missed",
            "Requests that did not attain their SLO, by cause: ttft, tpot (first token on "
            "time), rejected, aborted, error.",
            (*labels, "cause"),
            registry=registry,
        )
        self.rejected = Counter(
            "hyperflexis:requests_rejected",
            "Requests answered 503, by where: dispatch, instance, queue.",
            (*labels, "reason"),
            registry=registry,
        )
        self.overhead = self._histogram(
            "hyperflexis:server_overhead_seconds",
            "Server time per request before it reaches an instance: parsing, tokenisation, "
            "SLO resolution, dispatch.",
            ("model_name",),
            OVERHEAD_BUCKETS_S,
        )
        self.queued = Gauge(
            "hyperflexis:server_queued_requests",
            "Requests dispatched that have no first token yet (what --max-queued bounds).",
            ("model_name",),
            registry=registry,
        )

    def _init_class(self, slo_class: str) -> None:
        """Create a class's series at zero, so dashboards and rates see them from the start."""
        model = self.model_name
        for metric in (self.class_ttft, self.class_tpot, self.attained):
            metric.labels(model, slo_class)
        for cause in MISS_CAUSES:
            self.missed.labels(model, slo_class, cause)
        for where in REJECTED_WHERE:
            self.rejected.labels(model, slo_class, where)

    def _init_engine(self, engine: str) -> None:
        model = self.model_name
        for metric in (
            self.ttft,
            self.inter_token,
            self.time_per_output_token,
            self.request_tpot,
            *self.phases.values(),
            self.request_prompt_tokens,
            self.request_generation_tokens,
            self.request_max_generation_tokens,
            self.prompt_tokens,
            self.generation_tokens,
            self.preemptions,
        ):
            metric.labels(model, engine)
        for reason in FINISHED_REASONS:
            self.request_success.labels(model, engine, reason)
        self._engines.add(engine)

    # -- request events ---------------------------------------------------------------------

    def on_rejected(self, slo_class: str, where: str) -> None:
        """Turned away with a 503 (`where` is one of REJECTED_WHERE)."""
        self.rejected.labels(self.model_name, slo_class, where).inc()
        self.missed.labels(self.model_name, slo_class, "rejected").inc()

    def on_first_token(
        self, engine: str, slo_class: str, ttft_s: float, num_prompt_tokens: int
    ) -> None:
        self.ttft.labels(self.model_name, engine).observe(ttft_s)
        self.class_ttft.labels(self.model_name, slo_class).observe(ttft_s)
        self.prompt_tokens.labels(self.model_name, engine).inc(num_prompt_tokens)

    def on_tokens(self, engine: str, num_tokens: int, gap_s: float | None) -> None:
        """`num_tokens` new output tokens, `gap_s` after the request's previous token (None for
        the first): each token counts as one inter-token observation of gap/num_tokens."""
        self.generation_tokens.labels(self.model_name, engine).inc(num_tokens)
        if gap_s is None or num_tokens == 0:
            return
        per_token_s = gap_s / num_tokens
        for histogram in (self.inter_token, self.time_per_output_token):
            child = histogram.labels(self.model_name, engine)
            for _ in range(num_tokens):
                child.observe(per_token_s)

    def on_finished(self, engine: str, slo: SLO, delta: OutputDelta, e2e_s: float) -> None:
        """A request its instance finished (or that failed with it)."""
        model, reason = self.model_name, delta.finish_reason or "error"
        self.request_success.labels(model, engine, reason).inc()
        self.phases["e2e"].labels(model, engine).observe(e2e_s)
        self.request_prompt_tokens.labels(model, engine).observe(delta.num_prompt_tokens)
        for histogram in (self.request_generation_tokens, self.request_max_generation_tokens):
            histogram.labels(model, engine).observe(delta.num_output_tokens)
        self._observe_phases(engine, delta)
        if delta.tpot_s is not None:
            self.request_tpot.labels(model, engine).observe(delta.tpot_s)
        if reason == "rejected":
            self.on_rejected(slo.class_name, "instance")
        elif reason in ("stop", "length"):
            self._judge(slo, delta)
        else:
            cause = "error" if reason == "error" else "aborted"
            self.missed.labels(model, slo.class_name, cause).inc()

    def _observe_phases(self, engine: str, delta: OutputDelta) -> None:
        """Queue, prefill, decode and inference time from the instance's durations."""
        model, queue_s, ttft_s = self.model_name, delta.queue_s, delta.ttft_s
        if queue_s is not None:
            self.phases["queue"].labels(model, engine).observe(queue_s)
        if ttft_s is None or queue_s is None:
            return
        prefill_s = ttft_s - queue_s
        decode_s = 0.0 if delta.tpot_s is None else delta.tpot_s * (delta.num_output_tokens - 1)
        self.phases["prefill"].labels(model, engine).observe(prefill_s)
        self.phases["decode"].labels(model, engine).observe(decode_s)
        self.phases["inference"].labels(model, engine).observe(prefill_s + decode_s)

    def _judge(self, slo: SLO, delta: OutputDelta) -> None:
        model, name = self.model_name, slo.class_name
        if delta.tpot_s is not None:
            self.class_tpot.labels(model, name).observe(delta.tpot_s)
        if delta.attained:
            self.attained.labels(model, name).inc()
            return
        late_first = delta.ttft_s is None or delta.ttft_s > slo.ttft_s
        self.missed.labels(model, name, "ttft" if late_first else "tpot").inc()

    def on_aborted(self, engine: str, slo_class: str) -> None:
        """The client went away before its request finished."""
        self.request_success.labels(self.model_name, engine, "abort").inc()
        self.missed.labels(self.model_name, slo_class, "aborted").inc()

    def observe_overhead(self, seconds: float) -> None:
        self.overhead.labels(self.model_name).observe(seconds)
        self.recent_overheads_s.append(seconds)

    def overhead_quantiles_ms(self) -> dict[str, float | int | None]:
        samples = sorted(self.recent_overheads_s)

        def at(q: float) -> float | None:
            if not samples:
                return None
            return 1000.0 * samples[min(len(samples) - 1, int(q * len(samples)))]

        return {"count": len(samples), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}

    # -- instances --------------------------------------------------------------------------

    def observe_instance(self, handle: InstanceHandle) -> None:
        """Set an instance's gauges from its latest report (and create its series)."""
        engine = handle.instance_id
        if engine not in self._engines:
            self._init_engine(engine)
        model, gauges = self.model_name, self.instance_gauges
        gauges["up"].labels(model, engine).set(1.0)
        gauges["correction"].labels(model, engine).set(handle.correction_factor)
        snapshot = handle.snapshot
        if snapshot is not None:
            gauges["running"].labels(model, engine).set(snapshot.num_running)
            gauges["waiting"].labels(model, engine).set(snapshot.num_waiting)
            for key in ("kv", "gpu_kv"):
                gauges[key].labels(model, engine).set(snapshot.kv_usage)
        # The instance reports a running total; the counter moves by what is new.
        new = handle.num_preemptions - self._num_preemptions.get(engine, 0)
        if new > 0:
            self.preemptions.labels(model, engine).inc(new)
            self._num_preemptions[engine] = handle.num_preemptions

    def remove_instance(self, engine: str) -> None:
        """Drop a failed or removed instance's gauges (its counters and histograms stay: they
        are totals over the server's life, and sums over instances must not fall)."""
        for gauge in self.instance_gauges.values():
            gauge.remove(self.model_name, engine)
        self._num_preemptions.pop(engine, None)
        self._engines.discard(engine)

    # -- exposition -------------------------------------------------------------------------

    def render(self, num_queued: int, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition in the format the scraper's Accept header asks for (Prometheus text
        by default, OpenMetrics on request), and its content type."""
        self.queued.labels(self.model_name).set(num_queued)
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
