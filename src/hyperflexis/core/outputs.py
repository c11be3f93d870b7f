"""What generation returns, shaped like vLLM's offline outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from hyperflexis.core.slo import mean_tpot_s


@dataclass(slots=True)
class Logprob:
    """One token's log-probability under the model's raw distribution (log-softmax of its
    logits, before penalties, biases, temperature or filtering, as vLLM reports it)."""

    logprob: float
    rank: int  # 1 for the most likely token
    decoded_token: str | None = None  # the token's text, when a tokenizer filled it in


# Per output token: the sampled token and the `logprobs` most likely ones, by token id.
SampleLogprobs = list[dict[int, Logprob]]
# Per prompt token, likewise; None for the first, which nothing predicts (vLLM's shape).
PromptLogprobs = list[dict[int, Logprob] | None]


class SampledTokens(dict[str, int]):
    """A step's sampled token per request id, plus the logprobs of those that asked for them
    (a dict, so step runners that return a plain mapping of tokens still fit the loop)."""

    def __init__(
        self,
        tokens: dict[str, int],
        logprobs: dict[str, dict[int, Logprob]],
        prompt_logprobs: dict[str, dict[int, dict[int, Logprob]]] | None = None,
    ) -> None:
        super().__init__(tokens)
        self.logprobs = logprobs  # request id -> the sampled token's and top tokens' Logprobs
        # Request id -> prompt position -> that prompt token's and the top tokens' Logprobs.
        self.prompt_logprobs = prompt_logprobs or {}


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence; fields and order as vLLM's."""

    index: int  # which of the request's n samples
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None  # sum of the sampled tokens' logprobs; None unless asked
    logprobs: SampleLogprobs | None  # None unless SamplingParams.logprobs was set
    finish_reason: str | None = None  # "stop", "length", "abort", "rejected", "error"
    stop_reason: str | int | None = None  # the stop string or token that ended it


@dataclass(slots=True)
class RequestMetrics:
    """Timestamps on the engine's clock, in seconds."""

    arrival_s: float
    first_scheduled_s: float | None = None  # a step first computed any of its tokens
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_s: float | None = None
    num_preemptions: int = 0
    num_output_tokens: int = 0  # output tokens so far

    @property
    def queue_s(self) -> float | None:
        """Arrival until first scheduled (vLLM's queue time)."""
        first = self.first_scheduled_s
        return None if first is None else first - self.arrival_s

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
    """The result of one prompt: one `CompletionOutput` per sample (`SamplingParams.n`)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(arrival_s=0.0))
    attained: bool | None = None  # met its SLO; None until finished
    prompt_logprobs: PromptLogprobs | None = None  # None unless SamplingParams.prompt_logprobs
