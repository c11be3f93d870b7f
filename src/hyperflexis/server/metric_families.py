"""The series /metrics exports (docs/metrics.md lists them): names, help, labels and buckets, made
in one server's registry, and each instance's or SLO class's children resolved once, since a
`labels()` lookup per token would cost more than the observation itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

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
KV_TRANSFER_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
ROLE_FLIP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KV_TRANSFER_BUCKETS_BYTES = tuple(float(2**k) for k in range(12, 36, 2))  # 4 KiB .. 32 GiB
ROLES = ("mixed", "prefill", "decode")

ENGINE_LABELS = ("model_name", "engine")
CLASS_LABELS = ("model_name", "slo_class")
# An instance's finished requests, as vLLM's `finished_reason` (plus HyperFlexis's "rejected").
FINISHED_REASONS = ("stop", "length", "abort", "rejected", "error")
# Why a request did not attain its SLO: late first token, slow tokens after an on-time first
# one, turned away, client went away, failed.
MISS_CAUSES = ("ttft", "tpot", "rejected", "aborted", "error")
REJECTED_WHERE = ("dispatch", "instance", "queue")  # no instance fits, late, server queue full
# What became of a failed instance's open requests (server/health.py).
RECOVERY_OUTCOMES = ("redispatched", "resumed", "failed")

# Per instance, with vLLM's names. Key -> (name, help, buckets); None: token-count buckets up to
# the model's context.
ENGINE_HISTOGRAMS: dict[str, tuple[str, str, tuple[float, ...] | None]] = {
    "ttft": ("vllm:time_to_first_token_seconds", "Time to first token, seconds.", TTFT_BUCKETS_S),
    "itl": (
        "vllm:inter_token_latency_seconds",
        "Time between successive output tokens, seconds; one observation per token.",
        TOKEN_GAP_BUCKETS_S,
    ),
    "request_tpot": (
        "vllm:request_time_per_output_token_seconds",
        "Per request: mean time per output token after the first, seconds.",
        TOKEN_GAP_BUCKETS_S,
    ),
    "e2e": (
        "vllm:e2e_request_latency_seconds",
        "Arrival to last token, seconds.",
        REQUEST_BUCKETS_S,
    ),
    "queue": (
        "vllm:request_queue_time_seconds",
        "Arrival to first scheduled, seconds.",
        REQUEST_BUCKETS_S,
    ),
    "prefill": (
        "vllm:request_prefill_time_seconds",
        "First scheduled to first token, seconds.",
        REQUEST_BUCKETS_S,
    ),
    "decode": (
        "vllm:request_decode_time_seconds",
        "First token to last token, seconds.",
        REQUEST_BUCKETS_S,
    ),
    "inference": (
        "vllm:request_inference_time_seconds",
        "First scheduled to last token, seconds.",
        REQUEST_BUCKETS_S,
    ),
    "prompt_len": ("vllm:request_prompt_tokens", "Prompt tokens per request.", None),
    "output_len": ("vllm:request_generation_tokens", "Output tokens per request.", None),
    "max_output_len": (
        "vllm:request_max_num_generation_tokens",
        "Output tokens of a request's longest sequence.",
        None,
    ),
}
ENGINE_COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens", "Prompt tokens, counted at the first token."),
    "generation_tokens": ("vllm:generation_tokens", "Generated tokens."),
    "preemptions": ("vllm:num_preemptions", "Preemptions (KV freed, recomputed later)."),
    "failures": (
        "hyperflexis:instance_failures",
        "Times the instance failed: exited, silent past --instance-timeout-s, or its role "
        "flip unanswered past --start-timeout-s.",
    ),
    "restarts": ("hyperflexis:instance_restarts", "Replacement processes started for it."),
}
ENGINE_GAUGES = {
    "running": ("vllm:num_requests_running", "Requests holding KV blocks."),
    "waiting": ("vllm:num_requests_waiting", "Requests waiting for prefill or re-admission."),
    "kv": ("vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (0 to 1)."),
    "up": ("hyperflexis:instance_up", "1 while the instance serves."),
    "correction": (
        "hyperflexis:instance_correction_factor",
        "Measured over predicted step time (online latency correction).",
    ),
}
# vLLM's older names, re-exported from the series above at scrape time.
ALIASES = {
    "itl": ("vllm:time_per_output_token_seconds", "The same as vllm:inter_token_latency_seconds."),
    "kv": ("vllm:gpu_cache_usage_perc", "The same as vllm:kv_cache_usage_perc."),
}


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


@dataclass(frozen=True, slots=True)
class EngineSeries:
    """One instance's children of every per-instance family."""

    histograms: dict[str, Histogram]  # by ENGINE_HISTOGRAMS key
    counters: dict[str, Counter]  # by ENGINE_COUNTERS key
    success: dict[str, Counter]  # vllm:request_success_total by finished reason
    gauges: dict[str, Gauge]  # by ENGINE_GAUGES key


@dataclass(frozen=True, slots=True)
class ClassSeries:
    """One SLO class's children of every per-class family."""

    ttft: Histogram
    tpot: Histogram
    attained: Counter
    missed: dict[str, Counter]  # by MISS_CAUSES
    rejected: dict[str, Counter]  # by REJECTED_WHERE


class Renamed:
    """A collector that re-exports another family's samples under a second name (vLLM's older
    names), so that an event is recorded once."""

    def __init__(self, source: MetricWrapperBase, name: str, documentation: str) -> None:
        self.source, self.name, self.documentation = source, name, documentation

    def collect(self) -> Iterable[Metric]:
        for family in self.source.collect():
            renamed = Metric(self.name, self.documentation, family.type)
            for s in family.samples:
                suffix = s.name[len(family.name) :]
                renamed.add_sample(self.name + suffix, s.labels, s.value, s.timestamp)
            yield renamed


class Families:
    """Every family of one server's registry."""

    def __init__(self, registry: CollectorRegistry, model_name: str, max_model_len: int) -> None:
        self.model_name = model_name
        tokens = one_two_five_buckets(max_model_len)
        self.engine_histograms = {
            key: Histogram(
                name, doc, ENGINE_LABELS, buckets=tokens if b is None else b, registry=registry
            )
            for key, (name, doc, b) in ENGINE_HISTOGRAMS.items()
        }
        self.engine_counters = {
            key: Counter(name, doc, ENGINE_LABELS, registry=registry)
            for key, (name, doc) in ENGINE_COUNTERS.items()
        }
        self.success = Counter(
            "vllm:request_success",
            "Finished requests, by finished_reason.",
            (*ENGINE_LABELS, "finished_reason"),
            registry=registry,
        )
        self.engine_gauges = {
            key: Gauge(name, doc, ENGINE_LABELS, registry=registry)
            for key, (name, doc) in ENGINE_GAUGES.items()
        }
        sources: dict[str, MetricWrapperBase] = {**self.engine_histograms, **self.engine_gauges}
        for key, (name, doc) in ALIASES.items():
            registry.register(Renamed(sources[key], name, doc))
        self._define_class_families(registry)
        self._define_pd_families(registry)
        self.overhead = Histogram(
            "hyperflexis:server_overhead_seconds",
            "Server time per request before it reaches an instance: parsing, tokenisation, "
            "SLO resolution, dispatch.",
            ("model_name",),
            buckets=OVERHEAD_BUCKETS_S,
            registry=registry,
        ).labels(model_name)
        recovered = Counter(
            "hyperflexis:requests_recovered",
            "Open requests of a failed instance, by outcome: redispatched (had streamed "
            "nothing), resumed (continued elsewhere), failed (ended with an error).",
            ("model_name", "outcome"),
            registry=registry,
        )
        self.recovered = {o: recovered.labels(model_name, o) for o in RECOVERY_OUTCOMES}
        self.queued = Gauge(
            "hyperflexis:server_queued_requests",
            "Requests dispatched that have no first token yet (what --max-queued bounds).",
            ("model_name",),
            registry=registry,
        ).labels(model_name)

    def _define_class_families(self, registry: CollectorRegistry) -> None:
        labels = CLASS_LABELS
        self.class_ttft = Histogram(
            "hyperflexis:time_to_first_token_seconds",
            "Time to first token, seconds, per SLO class.",
            labels,
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.class_tpot = Histogram(
            "hyperflexis:time_per_output_token_seconds",
            "Per completed request: mean time per output token after the first (what its TPOT "
            "target judges), seconds, per SLO class.",
            labels,
            buckets=TOKEN_GAP_BUCKETS_S,
            registry=registry,
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

    def _define_pd_families(self, registry: CollectorRegistry) -> None:
        model = ("model_name",)
        self.kv_transfer_s = Histogram(
            "hyperflexis:kv_transfer_seconds",
            "P/D: seconds a decode instance spent pulling a request's KV (ok or not).",
            model,
            buckets=KV_TRANSFER_BUCKETS_S,
            registry=registry,
        ).labels(self.model_name)
        self.kv_transfer_bytes = Histogram(
            "hyperflexis:kv_transfer_bytes",
            "P/D: bytes of KV a decode instance pulled for a request.",
            model,
            buckets=KV_TRANSFER_BUCKETS_BYTES,
            registry=registry,
        ).labels(self.model_name)
        self.handoff_failures = Counter(
            "hyperflexis:kv_handoff_failures",
            "P/D: KV pulls that failed or timed out (the decode instance recomputed instead).",
            model,
            registry=registry,
        ).labels(self.model_name)
        self.recomputes = Counter(
            "hyperflexis:kv_handoff_recomputes",
            "P/D: hand-offs whose decode instance recomputed the prompt (failed pull, or KV "
            "lost before it).",
            model,
            registry=registry,
        ).labels(self.model_name)
        self.migrations = Counter(
            "hyperflexis:migrations",
            "Requests moved off a draining instance (serve --scaler), KV and all or recomputed.",
            model,
            registry=registry,
        ).labels(self.model_name)
        self.role_flip_s = Histogram(
            "hyperflexis:role_flip_seconds",
            "serve --scaler, P/D: seconds from a role switch decision to serving in the new role.",
            model,
            buckets=ROLE_FLIP_BUCKETS_S,
            registry=registry,
        ).labels(self.model_name)
        instances = Gauge(
            "hyperflexis:instances",
            "Instances up, by role (mixed, prefill, decode).",
            (*model, "role"),
            registry=registry,
        )
        self.instances_by_role = {role: instances.labels(self.model_name, role) for role in ROLES}
        self.instance_seconds = _by_role(
            Counter(
                "hyperflexis:instance_seconds",
                "Instance-seconds by role: every instance process holding its machine, loading "
                "or serving.",
                (*model, "role"),
                registry=registry,
            ),
            self.model_name,
        )
        self.cost_usd = _by_role(
            Counter(
                "hyperflexis:cost_usd",
                "What the instances cost so far by role, USD, at --price-per-hour.",
                (*model, "role"),
                registry=registry,
            ),
            self.model_name,
        )

    def engine(self, engine: str) -> EngineSeries:
        """Create (at zero) and return an instance's series."""
        model = self.model_name
        return EngineSeries(
            {k: h.labels(model, engine) for k, h in self.engine_histograms.items()},
            {k: c.labels(model, engine) for k, c in self.engine_counters.items()},
            {r: self.success.labels(model, engine, r) for r in FINISHED_REASONS},
            {k: g.labels(model, engine) for k, g in self.engine_gauges.items()},
        )

    def drop_gauges(self, engine: str) -> None:
        for gauge in self.engine_gauges.values():
            gauge.remove(self.model_name, engine)

    def slo_class(self, name: str) -> ClassSeries:
        """Create (at zero) and return a class's series."""
        model = self.model_name
        return ClassSeries(
            self.class_ttft.labels(model, name),
            self.class_tpot.labels(model, name),
            self.attained.labels(model, name),
            {c: self.missed.labels(model, name, c) for c in MISS_CAUSES},
            {w: self.rejected.labels(model, name, w) for w in REJECTED_WHERE},
        )


def _by_role(counter: Counter, model_name: str) -> dict[str, Counter]:
    return {role: counter.labels(model_name, role) for role in ROLES}
