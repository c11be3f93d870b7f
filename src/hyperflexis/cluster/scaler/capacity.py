"""What one instance sustains, from the latency model: the inverse question (DESIGN.md §6).

Prefill: tokens/s when every step carries the largest chunk that fits the step budget (a prefill
instance's target step time; a mixed instance's tightest TPOT, since its decodes share each step).
Decode: tokens/s at the largest batch whose step fits the tightest TPOT served, bounded by the KV
cache at the observed mean context and by the scheduler's batch limits; found by bisection on
`predict`, so any monotone latency model works.

A mixed instance splits its time between the two; its load is the sum of the two fractions
(`utilisation`). Prefill and decode share the weight reads of a step, so the true region is larger
than that sum says: the estimate errs on the side of more instances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hyperflexis.perf.base import StepCostModel, StepFeatures, max_prefill_tokens
from hyperflexis.scheduler.config import Role, SchedulerConfig


@dataclass(frozen=True, slots=True)
class InstanceCapacity:
    """What one instance of `role` sustains at one workload shape."""

    role: Role  # the role it was computed for
    prefill_tokens_s: float  # prompt tokens/s with steps full of prefill; 0 for decode
    prefill_chunk_tokens: int  # tokens per such step
    prefill_step_s: float  # predicted time of such a step
    decode_tokens_s: float  # output tokens/s at the largest decode batch; 0 for prefill
    max_decode_batch: int  # that batch: fits the TPOT, the KV cache and max_num_seqs
    decode_step_s: float  # predicted time of a step of that batch

    def utilisation(self, prefill_tokens_s: float, decode_tokens_s: float) -> float:
        """Fraction of this instance a load takes; above 1 it cannot keep up."""
        total = 0.0
        for demand, capacity in (
            (prefill_tokens_s, self.prefill_tokens_s),
            (decode_tokens_s, self.decode_tokens_s),
        ):
            if demand > 0:
                total += demand / capacity if capacity > 0 else math.inf
        return total

    def describe(self) -> str:
        parts = []
        if self.prefill_tokens_s > 0:
            parts.append(
                f"prefill {self.prefill_tokens_s:.0f} tok/s ({self.prefill_chunk_tokens} tok in "
                f"{self.prefill_step_s * 1e3:.1f} ms)"
            )
        if self.decode_tokens_s > 0:
            parts.append(
                f"decode {self.decode_tokens_s:.0f} tok/s (batch {self.max_decode_batch} in "
                f"{self.decode_step_s * 1e3:.1f} ms)"
            )
        return ", ".join(parts) or "nothing"


class CapacityModel:
    """Answers 'how much does one instance of this role sustain' for the observed shape."""

    def __init__(
        self,
        cost_model: StepCostModel,
        scheduler_config: SchedulerConfig,
        kv_cache_tokens: int,
    ) -> None:
        if kv_cache_tokens < 1:
            raise ValueError(f"invalid 'kv_cache_tokens': must be >= 1, got {kv_cache_tokens}")
        self.cost_model = cost_model  # the instances' step latency model
        self.scheduler_config = scheduler_config  # their scheduler's limits and step budgets
        self.kv_cache_tokens = kv_cache_tokens  # tokens of KV one instance holds

    def capacity(
        self,
        role: Role,
        mean_prompt_tokens: float,
        mean_decode_context_tokens: float,
        tightest_tpot_s: float | None,
    ) -> InstanceCapacity:
        """One `role` instance's capacity at these mean lengths and the tightest TPOT served
        (None: no decode target known, steps bounded by `max_step_s`)."""
        config = replace(self.scheduler_config, role=role)
        prefill_tokens_s, chunk, prefill_step_s = 0.0, 0, 0.0
        decode_tokens_s, batch, decode_step_s = 0.0, 0, 0.0
        if role != "decode":
            if role == "prefill":
                budget_s = config.target_step_s
            else:
                budget_s = min(tightest_tpot_s or math.inf, config.max_step_s)
            prefill_tokens_s, chunk, prefill_step_s = self._prefill(
                config, budget_s, mean_prompt_tokens
            )
        if role != "prefill":
            budget_s = min(tightest_tpot_s or math.inf, config.max_step_s)
            decode_tokens_s, batch, decode_step_s = self._decode(
                config, budget_s, mean_decode_context_tokens
            )
        return InstanceCapacity(
            role, prefill_tokens_s, chunk, prefill_step_s, decode_tokens_s, batch, decode_step_s
        )

    def largest_decode_batch(self, budget_s: float, context_tokens: float, limit: int) -> int:
        """The largest batch (<= limit) of decodes at `context_tokens` whose step fits
        `budget_s`; 0 when not even one does."""

        def fits(batch: int) -> bool:
            return self.cost_model.predict(_decodes(batch, context_tokens)) <= budget_s

        if limit < 1 or not fits(1):
            return 0
        if fits(limit):
            return limit
        low, high = 1, limit  # fits(low), not fits(high)
        while high - low > 1:
            mid = (low + high) // 2
            if fits(mid):
                low = mid
            else:
                high = mid
        return low

    def _prefill(
        self, config: SchedulerConfig, budget_s: float, mean_prompt_tokens: float
    ) -> tuple[float, int, float]:
        limit = config.max_num_batched_tokens
        if config.max_prefill_chunk is not None:
            limit = min(limit, config.max_prefill_chunk)
        # A long prompt runs in chunks whose context grows from 0 to prompt - chunk; charge every
        # chunk the middle of that range. Short prompts pack into one step at context 0.
        chunk = max_prefill_tokens(self.cost_model, StepFeatures(), 0, budget_s, limit)
        ctx = int(max(mean_prompt_tokens - chunk, 0.0) / 2)
        if ctx:
            chunk = max_prefill_tokens(self.cost_model, StepFeatures(), ctx, budget_s, limit)
        if chunk <= 0:
            return 0.0, 0, 0.0
        step_s = self.cost_model.predict(StepFeatures().with_prefill(chunk, ctx))
        return chunk / step_s, chunk, step_s

    def _decode(
        self, config: SchedulerConfig, budget_s: float, context_tokens: float
    ) -> tuple[float, int, float]:
        kv_limit = int(self.kv_cache_tokens // max(context_tokens + 1.0, 1.0))
        limit = min(config.max_num_seqs, config.max_num_batched_tokens, kv_limit)
        batch = self.largest_decode_batch(budget_s, context_tokens, limit)
        if batch <= 0:
            return 0.0, 0, 0.0
        step_s = self.cost_model.predict(_decodes(batch, context_tokens))
        return batch / step_s, batch, step_s


def _decodes(batch: int, context_tokens: float) -> StepFeatures:
    return StepFeatures(num_decodes=batch, decode_ctx_tokens=int(batch * context_tokens))
