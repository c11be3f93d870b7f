"""A request's state as the scheduler and engine see it: tokens, progress, SLO, timing."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO, mean_tpot_s, token_lateness_s

DEFAULT_SLO = SLO(ttft_s=3600.0, tpot_s=3600.0, priority=1, class_name="default")


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued; has tokens whose KV is not computed
    RUNNING = "running"  # holds KV blocks and is scheduled step by step
    RECEIVING = "receiving"  # holds KV blocks its prompt's KV is being copied into from a peer
    FINISHED = "finished"  # ended; see finish_reason


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORTED = "abort"  # the client went away or the caller aborted it
    REJECTED = "rejected"  # admission control: it could no longer meet its SLO
    PREFILLED = "prefilled"  # a prefill instance finished its part; decode continues elsewhere
    ERROR = "error"  # the engine failed while serving it


@dataclass(slots=True, eq=False)
class Request:
    """One request. Tokens whose KV exists are `num_computed_tokens`; the rest are to compute.

    There is no prefill or decode phase: a step computes some of a request's uncomputed tokens,
    and when it reaches the last one the engine samples the next token (as vLLM v1 does).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    slo: SLO = DEFAULT_SLO
    arrival_s: float = 0.0  # when it reached the system, on the driver's clock
    eos_token_id: int | None = None  # the model's EOS; stops the request unless ignore_eos
    token_ids: list[int] = field(init=False)  # prompt then output tokens
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    first_scheduled_s: float | None = None  # when a step first scheduled any of its tokens
    first_token_s: float | None = None  # when its first output token was produced
    last_token_s: float | None = None  # when its latest output token was produced
    finish_s: float | None = None
    num_preemptions: int = 0
    max_itl_s: float | None = None  # largest gap between two output tokens; None before two
    # Largest `core.slo.token_lateness_s` of its output tokens (<= 0: every token met its
    # per-token deadline); None before the first token.
    max_token_lateness_s: float | None = None
    # When the next token is due: the TTFT deadline before the first token, then the first
    # token's time plus k TPOTs for k output tokens. Cumulative, so a request that ran ahead banks
    # slack and its mean TPOT stays within target. Kept up to date by append_token(s) (the
    # schedulers read it for every request every step); read-only elsewhere.
    next_token_deadline_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        self.next_token_deadline_s = self.ttft_deadline_s

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Its next step is a decode: it has its first token and only the latest to compute
        (a prompt's last token, or a preempted request's recompute, is not one)."""
        return (
            self.first_token_s is not None and len(self.token_ids) - self.num_computed_tokens == 1
        )

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def ttft_deadline_s(self) -> float:
        return self.arrival_s + self.slo.ttft_s

    def append_token(self, token_id: int, now: float) -> None:
        self.append_tokens(token_id, 1, now)

    def append_tokens(
        self,
        token_id: int,
        count: int,
        now: float,
        spread: tuple[float, float] | None = None,
    ) -> None:
        """Append `count` copies of `token_id`, all produced by `now`. The simulator's decode
        fast-forward applies several steps at once and passes `spread`: the largest gap and the
        largest per-token lateness among these tokens as they came step by step."""
        index = len(self.token_ids) - len(self.prompt_token_ids)  # the first new token's
        if spread is None:
            last_s = self.last_token_s
            gap_s = now - last_s if last_s is not None else (0.0 if count > 1 else None)
            slo = self.slo
            lateness_s = token_lateness_s(now, index, self.arrival_s, slo.ttft_s, slo.tpot_s)
        else:
            gap_s, lateness_s = spread
        if gap_s is not None and (self.max_itl_s is None or gap_s > self.max_itl_s):
            self.max_itl_s = gap_s
        if self.max_token_lateness_s is None or lateness_s > self.max_token_lateness_s:
            self.max_token_lateness_s = lateness_s
        self.token_ids.extend(itertools.repeat(token_id, count))
        first = self.first_token_s
        if first is None:
            first = self.first_token_s = now
        self.last_token_s = now
        self.next_token_deadline_s = first + (index + count) * self.slo.tpot_s

    def check_stop(self) -> FinishReason | None:
        """The stop a newly appended token triggers, without detokenising (stop strings are the
        engine's job since they need the tokenizer)."""
        params = self.sampling_params
        last = self.token_ids[-1]
        if not params.ignore_eos and last == self.eos_token_id:
            return FinishReason.STOP
        if last in params.stop_token_ids:
            return FinishReason.STOP
        if self.num_output_tokens >= params.max_tokens:
            return FinishReason.LENGTH
        return None

    def finish(self, reason: FinishReason, now: float) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.finish_s = now

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean TPOT (`core.slo.mean_tpot_s`); None until it finished with two or more tokens."""
        return mean_tpot_s(self.first_token_s, self.finish_s, self.num_output_tokens)

    @property
    def attained(self) -> bool:
        """Completed and met both its TTFT and its mean TPOT."""
        if self.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
            return False
        ttft, tpot = self.ttft_s, self.tpot_s
        return (
            ttft is not None
            and ttft <= self.slo.ttft_s
            and (tpot is None or tpot <= self.slo.tpot_s)
        )
