"""What crosses the pipes between the API server and its instance processes. Plain, picklable
dataclasses: the server sends commands in, each instance sends one `StepReport` out per step."""

from __future__ import annotations

from dataclasses import dataclass, field

from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.outputs import Logprob
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO

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
class Shutdown:
    """Stop the loop and exit."""


Command = AddRequest | AbortRequest | Shutdown

# -- instance -> server -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceReady:
    """Sent once, when the model is loaded and the loop is about to start."""

    instance_id: str
    pid: int  # of the instance process
    max_context_len: int  # most tokens (prompt + output) one request can hold
    vocab_size: int  # the model's: valid token ids are below it
    snapshot: LoadSnapshot  # the empty instance


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
class StepReport:
    """Published after every step, and after commands that changed an idle instance."""

    instance_id: str
    snapshot: LoadSnapshot  # load after the step, for the dispatcher
    deltas: list[OutputDelta] = field(default_factory=list)
    num_preemptions: int = 0  # since the instance started
    num_rejections: int = 0  # late requests its scheduler rejected, since it started
    step_execute_s: float = 0.0  # the model runner's time in this step; 0 when none ran
    correction_factor: float = 1.0  # the instance latency model's measured/predicted ratio


@dataclass(frozen=True, slots=True)
class InstanceFailed:
    """The instance could not start or its loop crashed; it exits after sending this."""

    instance_id: str
    message: str


Report = InstanceReady | StepReport | InstanceFailed
