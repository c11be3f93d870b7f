"""What generation returns, shaped like vLLM's offline outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from hyperflexis.core.slo import mean_tpot_s


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort", "rejected", "error"; None while running
    stop_reason: str | int | None = None  # the stop string or token that ended it


@dataclass(slots=True)
class RequestMetrics:
    """Timestamps on the engine's clock, in seconds."""

    arrival_s: float
    first_token_s: float | None = None
    finish_s: float | None = None
    num_preemptions: int = 0
    num_output_tokens: int = 0  # output tokens so far

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean TPOT (`core.slo.mean_tpot_s`); None until it finished with two or more tokens."""
        return mean_tpot_s(self.first_token_s, self.finish_s, self.num_output_tokens)


@dataclass(slots=True)
class RequestOutput:
    """The result of one prompt."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(arrival_s=0.0))
    attained: bool | None = None  # met its SLO; None until finished
