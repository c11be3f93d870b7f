"""`ServerConfig`: what `hyperflexis serve` starts, checked on construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hyperflexis.cluster.links import LINK_POLICIES, LinkPolicy
from hyperflexis.cluster.migration import DEFAULT_DRAIN_DEADLINE_S
from hyperflexis.scheduler.config import Role, SchedulerConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20  # a 128k-token prompt as token ids is ~1 MiB of JSON
DEFAULT_REQUEST_TIMEOUT_S = 300.0  # every request is answered within this (503 past it)
DEFAULT_INSTANCE_TIMEOUT_S = 5.0  # an instance silent this long (no heartbeat) is failed
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0  # SIGTERM: open requests get this long to finish
BACKEND_NAMES = ("local", "ray")  # backends/registry.py's, spelled here for a light import
MIN_INSTANCE_TIMEOUT_S = 1.0  # several heartbeats (backends/heartbeat.py beats every 0.25 s)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    model: str | None = None  # checkpoint folder; None: the built-in tiny model
    num_instances: int = 2  # collocated instance processes, each a full model replica
    # P/D instead (DESIGN.md §10): this many prefill and decode instances; 0 and 0: collocated.
    num_prefill: int = 0
    num_decode: int = 0
    kv_transport: str = "shm"  # P/D: the KV transport of every link (a transfer/ registry name)
    backend: str = "local"  # what runs the instances (backends/registry.py): local or ray
    ray_address: str | None = "auto"  # --backend ray: the cluster (auto: `ray start`'s here)
    # --backend ray: custom resources per role or instance id, e.g. {"decode": {"node2": 1}}
    ray_resources: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    link_policy: LinkPolicy = "all"  # P/D: which decode instances each prefill one hands to
    policy: str = "hyperflexis"  # instance scheduling policy
    dispatch: str = "hyperflexis"  # global dispatch policy
    slo_classes_path: Path | None = None  # SLO config file; None: the built-in classes
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (the readiness line says which)
    api_key: str | None = None  # None: no authentication
    metrics_require_key: bool = False  # /metrics needs the key too (it is open by default)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # 413 for a larger body
    # 503 beyond this many requests without a first token; None: max_num_seqs per live instance
    max_queued: int | None = None
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S  # None: no bound
    instance_timeout_s: float = DEFAULT_INSTANCE_TIMEOUT_S
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    max_restarts: int = 3  # replacements of one failed instance within restart_window_s
    restart_window_s: float = 300.0
    # Instances publish their weights (one shared copy on the host) and replacements map a live
    # peer's (transfer/weights.py); off: every start loads from disk.
    peer_weights: bool = False
    price_per_hour: float = 0.0  # USD per instance-hour, for the cost in /metrics
    # serve --scaler: the scaler the control loop asks every control interval; None: the
    # instances are fixed. Each pool (collocated: one; P/D: prefill and decode) stays within
    # [min_instances, max_instances]. A drain's decodes that would outlive drain_deadline_s
    # migrate to another instance.
    scaler: str | None = None
    min_instances: int = 1
    max_instances: int = 4
    control_interval_s: float = 10.0
    drain_deadline_s: float = DEFAULT_DRAIN_DEADLINE_S
    dtype: str = "auto"  # vLLM's auto: float32 on the CPU, the checkpoint's dtype on a GPU
    device: str = "cpu"  # every instance on it; "cuda" spreads nothing by itself
    kv_cache_bytes: int | None = None  # per instance; None: the runner's default
    profile_path: Path | None = None  # step latency profile; None: cached, made when missing
    # Every instance's scheduler (all run both phases); its admission control also lets the
    # dispatcher answer 503 to requests no instance can serve in time.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_threads: int = 1  # torch CPU threads per instance
    seed: int = 0  # sampling seed of instance 0 (instance i uses seed + i)
    ready_timeout_s: float = 300.0  # how long instances may take to load
    # A replacement or a scaled-out instance still loading this long, or a role flip not
    # answered by then, is killed (a replacement is restarted within the budget, the others
    # leave).
    start_timeout_s: float = 300.0
    graceful_shutdown_s: int = 2  # after the drain: uvicorn's wait for responses to flush
    # vLLM's spellings of what a deployment also sets:
    served_model_names: tuple[str, ...] = ()  # the first is the id /v1/models lists
    max_model_len: int | None = None  # a context shorter than the model's
    chat_template: str | None = None  # a jinja2 template (or a file of one) over the model's
    tokenizer: str | None = None  # a tokenizer folder other than the model's
    block_size: int = 16  # tokens per KV block
    gpu_memory_utilization: float | None = None  # share of the GPU each instance may fill

    def __post_init__(self) -> None:
        if self.num_instances < 1:
            raise ValueError(f"invalid 'instances': must be >= 1, got {self.num_instances}")
        if (self.num_prefill or self.num_decode) and min(self.num_prefill, self.num_decode) < 1:
            raise ValueError(
                "invalid 'prefill'/'decode': P/D needs at least one of each, got "
                f"{self.num_prefill} prefill and {self.num_decode} decode"
            )
        if self.link_policy not in LINK_POLICIES:
            raise ValueError(
                f"invalid 'links' {self.link_policy!r}: known: {', '.join(LINK_POLICIES)}"
            )
        if not self.kv_transport:
            raise ValueError("invalid 'kv_transport': must not be empty")
        if self.backend not in BACKEND_NAMES:
            known = ", ".join(BACKEND_NAMES)
            raise ValueError(f"invalid 'backend' {self.backend!r}: known: {known}")
        if self.ray_resources and self.backend != "ray":
            raise ValueError("invalid 'ray_resources': only with the ray backend")
        if self.scaler is not None:
            self._check_scaling()
        if not self.price_per_hour >= 0:
            raise ValueError(f"invalid 'price_per_hour': must be >= 0, got {self.price_per_hour}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"invalid 'port': must be in [0, 65535], got {self.port}")
        if self.max_queued is not None and self.max_queued < 1:
            raise ValueError(f"invalid 'max_queued': must be >= 1, got {self.max_queued}")
        if self.max_request_bytes < 1:
            raise ValueError(
                f"invalid 'max_request_bytes': must be >= 1, got {self.max_request_bytes}"
            )
        if self.metrics_require_key and self.api_key is None:
            raise ValueError("invalid 'metrics_require_key': needs an 'api_key'")
        if self.api_key is not None and not self.api_key:
            raise ValueError("invalid 'api_key': must not be empty")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(
                f"invalid 'request_timeout_s': must be > 0, got {self.request_timeout_s}"
            )
        if not self.instance_timeout_s >= MIN_INSTANCE_TIMEOUT_S:
            raise ValueError(
                f"invalid 'instance_timeout_s': must be >= {MIN_INSTANCE_TIMEOUT_S}, "
                f"got {self.instance_timeout_s}"
            )
        if not self.shutdown_timeout_s >= 0:
            raise ValueError(
                f"invalid 'shutdown_timeout_s': must be >= 0, got {self.shutdown_timeout_s}"
            )
        if not self.start_timeout_s > 0:
            raise ValueError(f"invalid 'start_timeout_s': must be > 0, got {self.start_timeout_s}")
        if self.max_restarts < 0:
            raise ValueError(f"invalid 'max_restarts': must be >= 0, got {self.max_restarts}")
        if self.num_threads < 1:
            raise ValueError(f"invalid 'num_threads': must be >= 1, got {self.num_threads}")
        if self.scheduler.role != "mixed":
            raise ValueError(
                f"invalid 'scheduler.role' {self.scheduler.role!r}: every server instance is mixed"
            )

    @property
    def is_disaggregated(self) -> bool:
        return self.num_prefill > 0

    def _check_scaling(self) -> None:
        sizes = (
            (self.num_prefill, self.num_decode) if self.is_disaggregated else (self.num_instances,)
        )
        if not 1 <= self.min_instances <= min(sizes) <= max(sizes) <= self.max_instances:
            what = "--prefill and --decode" if self.is_disaggregated else "--instances"
            raise ValueError(
                f"invalid '--min-instances'/'--max-instances': need 1 <= min <= {what} <= "
                f"max, got {self.min_instances}, {sizes}, {self.max_instances}"
            )
        if not self.control_interval_s > 0:
            raise ValueError("invalid '--control-interval': must be > 0")
        if not self.drain_deadline_s >= 0:
            raise ValueError("invalid '--drain-deadline-s': must be >= 0")

    def instance_roles(self) -> list[tuple[str, Role]]:
        """(instance id, role) of every instance: `instance-i` collocated, else `prefill-i`
        then `decode-i`."""
        if not self.is_disaggregated:
            return [(f"instance-{i}", "mixed") for i in range(self.num_instances)]
        prefill: list[tuple[str, Role]] = [
            (f"prefill-{i}", "prefill") for i in range(self.num_prefill)
        ]
        decode: list[tuple[str, Role]] = [(f"decode-{i}", "decode") for i in range(self.num_decode)]
        return prefill + decode
