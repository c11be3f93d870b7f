"""What crosses the pipes between the API server and its instance processes. Plain, picklable
dataclasses: the server sends commands in, each instance sends one `StepReport` out per step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.outputs import Logprob
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.scheduler.config import Role
from hyperflexis.transfer.base import PoolDescriptor

if TYPE_CHECKING:
    from hyperflexis.transfer.weights import WeightManifest

# -- server -> instance -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequest:
    """Queue a tokenised request on the instance."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    slo: SLO
    arrival_s: float  # when the server received it, on the shared monotonic clock


@dataclass(frozen=True, slots=True)
class AbortRequest:
    """End a request now (its client went away) and free its KV."""

    request_id: str


@dataclass(frozen=True, slots=True)
class KVSource:
    """Where a handed-off request's prompt KV lies: blocks pinned under a lease on a peer."""

    instance_id: str  # the instance that holds the blocks (P)
    pool: PoolDescriptor  # its registered KV pool, from its `InstanceReady`
    block_ids: tuple[int, ...]  # the request's blocks in that pool, in token order
    num_tokens: int  # tokens whose KV the blocks hold


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """Continue a request here: its prompt plus the output the client already has (DESIGN.md §10).

    The one resume path: a P/D hand-off and a migration carry `kv` and the instance pulls it
    first (blocks allocated, not decoding); recovery carries none, and the instance recomputes
    the prompt and the output so far. A failed or timed-out pull falls back to that recompute.
    Times are durations, never another process's clock reading."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # already emitted, in order (at least one after a prefill)
    sampling_params: SamplingParams
    slo: SLO  # unchanged: deadlines stay those of the original arrival
    age_s: float  # seconds since the server received the request, when this was sent
    ttft_s: float | None  # its first token's latency, when one was emitted
    num_text_chars_sent: int  # output text the client already has (stop-string hold-back aside)
    kv: KVSource | None = None
    queue_s: float | None = None  # arrival to first scheduled where it began (KVReady.queue_s)


@dataclass(frozen=True, slots=True)
class ReleaseKV:
    """The blocks this instance holds under lease for `request_id` may be freed."""

    request_id: str


@dataclass(frozen=True, slots=True)
class MigrateOut:
    """Stop decoding `request_id` here and pin its KV under a lease for another instance to
    pull (a drain's migration); answered by a `MigratedOut` in the next report."""

    request_id: str


@dataclass(frozen=True, slots=True)
class SwitchRole:
    """A drained instance takes `role` (a role flip): a new scheduler over the same engine,
    weights and registered KV pool; answered by an `InstanceReady` in the new role."""

    role: Role
    # A test's fault (`POST /debug/scale`'s `switch_hang_s`): the loop sleeps this long before
    # switching, its heartbeat going on, so the server's flip timeout can be seen to act.
    hang_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop the loop and exit."""


Command = AddRequest | ResumeRequest | AbortRequest | ReleaseKV | MigrateOut | SwitchRole | Shutdown

# -- instance -> server -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceReady:
    """Sent once, when the model is loaded and the loop is about to start."""

    instance_id: str
    pid: int  # of the instance process
    max_context_len: int  # most tokens (prompt + output) one request can hold
    vocab_size: int  # the model's: valid token ids are below it
    snapshot: LoadSnapshot  # the empty instance
    role: Role = "mixed"
    kv_pool: PoolDescriptor | None = None  # its KV pool as registered with its transport
    weight_source: str = "disk"  # the source that provided its weights (transfer/weights.py)
    weight_failures: tuple[str, ...] = ()  # "source: reason" of each source that failed first
    # Seconds per phase of its start: "startup_s" (asked to start to building: process start-up,
    # near 0 for a pre-started worker), "weights_s" (the load, fallbacks included), "warmup_s"
    # (the rest of the engine's build: KV cache, tokenizer, latency model, scheduler).
    start_phases_s: dict[str, float] = field(default_factory=dict)
    weights_manifest: WeightManifest | None = None  # its published weights, for peers to map

    def start_info(self) -> dict[str, Any]:
        """Where its weights came from and how its start went, for /debug/instances."""
        return {
            "weight_source": self.weight_source,
            "weight_failures": list(self.weight_failures),
            "start_phases_s": self.start_phases_s,
        }


@dataclass(frozen=True, slots=True)
class OutputDelta:
    """What one request gained in one step."""

    request_id: str
    token_ids: list[int]  # new output tokens
    text: str  # new output text (stop strings cut, their possible start held back)
    finish_reason: str | None = None  # "stop", "length", "abort", "rejected", "error"; None: runs
    stop_reason: str | int | None = None  # the stop string or token that ended it
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # output tokens so far
    # Seconds on the instance from the request's previous token to this delta's tokens (all of
    # them); None when the delta holds its first token or none.
    inter_token_latency_s: float | None = None
    queue_s: float | None = None  # set when finished: arrival to first scheduled
    ttft_s: float | None = None  # set when finished: arrival to first token
    tpot_s: float | None = None  # set when finished: mean seconds per token after the first
    attained: bool | None = None  # set when finished: met its SLO
    num_preemptions: int = 0
    error: str | None = None  # why it failed, with finish_reason "error"
    error_status: int = 500  # the HTTP status of that failure: 400 when the request was invalid
    logprobs: list[dict[int, Logprob]] | None = None  # per new token, when the request asked
    # With the first tokens, when asked: per prompt token (None for the first one).
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class KVReady:
    """A prefill instance finished a prompt and pins its blocks under a lease for a decode peer."""

    request_id: str
    block_ids: tuple[int, ...]
    num_tokens: int
    lease_s: float  # the blocks are freed this long after the report unless released sooner
    queue_s: float  # arrival to first scheduled, on P
    ttft_s: float  # arrival to first token, on P


@dataclass(frozen=True, slots=True)
class MigratedOut:
    """The answer to `MigrateOut`: the request stopped here after `num_output_tokens` tokens
    (all of them already reported), its first `num_tokens` tokens' KV pinned in `block_ids`
    under a lease (none: `num_tokens` 0, the target recomputes). `moved` False: it was not
    decoding here (finished, or still receiving its KV) and goes on as it was."""

    request_id: str
    moved: bool
    block_ids: tuple[int, ...] = ()
    num_tokens: int = 0
    num_output_tokens: int = 0
    lease_s: float = 0.0
    queue_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HandoffDone:
    """A decode instance finished pulling a request's KV, or gave up and recomputes instead."""

    request_id: str
    ok: bool  # False: the pull failed or timed out; the request is being recomputed here
    transfer_s: float
    num_bytes: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StepReport:
    """Published after every step, and after commands that changed an idle instance."""

    instance_id: str
    snapshot: LoadSnapshot  # load after the step, for the dispatcher
    deltas: list[OutputDelta] = field(default_factory=list)
    num_preemptions: int = 0  # since the instance started
    num_rejections: int = 0  # late requests its scheduler rejected, since it started
    step_execute_s: float = 0.0  # the model runner's time in this step; 0 when none ran
    correction_factor: float = 1.0  # the instance latency model's measured/predicted ratio
    # Per kind of step, every step's measured/predicted ratio since the start: (count, sum, sum
    # of squares) (`perf.online.OnlineCorrection.ratio_moments`).
    step_ratio_moments: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    step_fit_moments: list[float] = field(default_factory=list)  # `OnlineCorrection.fit_moments`
    kv_ready: list[KVReady] = field(default_factory=list)  # prefills handed to the controller
    handoffs: list[HandoffDone] = field(default_factory=list)  # pulls that ended this step
    leases_expired: list[str] = field(default_factory=list)  # requests whose pinned KV was freed
    migrated: list[MigratedOut] = field(default_factory=list)  # answers to `MigrateOut`


@dataclass(frozen=True, slots=True)
class InstanceFailed:
    """The instance could not start or its loop crashed; it exits after sending this."""

    instance_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every `backends.heartbeat.HEARTBEAT_INTERVAL_S` by a thread of its own, idle or in a
    long step alike: silence means the process is frozen or gone, not busy."""

    instance_id: str


Report = InstanceReady | StepReport | InstanceFailed | Heartbeat
