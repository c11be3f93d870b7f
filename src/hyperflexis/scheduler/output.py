"""`SchedulerOutput`: the contract between the instance scheduler and whoever runs the step
(the real engine's model runner, or a simulated instance)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.perf.base import StepFeatures


@dataclass(slots=True)
class ScheduledChunk:
    """Some of one request's uncomputed tokens, computed in this step.

    A decode is a chunk of one token; a prefill chunk is several. When the chunk reaches the
    request's last token (`sample` is True) the runner samples the request's next token.
    """

    request_id: str
    token_ids: list[int]  # the tokens to compute, at positions start_pos .. start_pos+len-1
    start_pos: int  # tokens of this request already in the KV cache
    block_ids: list[int]  # the request's whole block table (shared list; read only)
    sample: bool  # the chunk ends at the last known token: sample the next one
    sampling_params: SamplingParams
    num_output_tokens: int  # output tokens so far; with the seed, makes sampling reproducible
    # The request's prompt and output tokens (the request's own list, read only): the sampler's
    # repetition, frequency and presence penalties read them. None where no penalty can apply.
    context_token_ids: list[int] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_decode(self) -> bool:
        return self.start_pos > 0 and len(self.token_ids) == 1 and self.sample


@dataclass(slots=True)
class SchedulerOutput:
    """What one step runs, plus the requests the step's decision took out of the batch."""

    chunks: list[ScheduledChunk] = field(default_factory=list)  # in batch order
    preempted_ids: list[str] = field(default_factory=list)  # KV freed; will recompute later
    rejected_ids: list[str] = field(default_factory=list)  # finished as REJECTED this step
    predicted_step_s: float | None = None  # the policy's latency model estimate, if it has one

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks

    def features(self) -> StepFeatures:
        """The latency model's view of the batch: decodes at their context, prefill chunks at
        theirs. The engine loop's measurements and the simulator's step times both use it, so
        simulated and real steps cost the same."""
        features = StepFeatures()
        for chunk in self.chunks:
            if chunk.is_decode:
                features.add_decode(chunk.start_pos)
            else:
                features.add_prefill(chunk.num_tokens, chunk.start_pos)
        return features
