"""What one instance sustains, from the latency model: the inverse question (DESIGN.md §6).

Prefill: tokens/s when every step carries the largest chunk that fits the step budget (a prefill
instance's target step time; a mixed instance's tightest TPOT, since its decodes share each step).
Decode: tokens/s at the largest batch whose step fits the tightest TPOT served, bounded by the KV
cache at the observed mean context and by the scheduler's batch limits; found by bisection on
`predict`, so any monotone latency model works.

A mixed instance runs its decodes and a prefill chunk in the same step, so they share the step's
weight reads: summing the two single-resource fractions (`utilisation`) overstates its load (at
the day peak by about a third). `CapacityModel.load_instances` instead asks how many instances the
joint demand fills: one step of a mixed instance carries decodes and prefill tokens in the
demand's ratio, as many as fit the step budget (the tightest TPOT), and sustains that step's
tokens over its predicted time. That is exact for a pure load (the single-resource answer) and
linear in the demand, so headroom still scales it.
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
    step_budget_s: float = math.inf  # a mixed instance's step budget: its tightest TPOT
    prefill_context_tokens: int = 0  # context charged to each prefill chunk
    decode_context_tokens: float = 0.0  # mean context of a decode

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
        prefill_ctx = 0
        if role != "decode":
            if role == "prefill":
                budget_s = config.target_step_s
            else:
                budget_s = min(tightest_tpot_s or math.inf, config.max_step_s)
            prefill_tokens_s, chunk, prefill_step_s, prefill_ctx = self._prefill(
                config, budget_s, mean_prompt_tokens
            )
        if role != "prefill":
            budget_s = min(tightest_tpot_s or math.inf, config.max_step_s)
            decode_tokens_s, batch, decode_step_s = self._decode(
                config, budget_s, mean_decode_context_tokens
            )
        return InstanceCapacity(
            role,
            prefill_tokens_s,
            chunk,
            prefill_step_s,
            decode_tokens_s,
            batch,
            decode_step_s,
            step_budget_s=min(tightest_tpot_s or math.inf, config.max_step_s),
            prefill_context_tokens=prefill_ctx,
            decode_context_tokens=mean_decode_context_tokens,
        )

    def load_instances(
        self, capacity: InstanceCapacity, prefill_tokens_s: float, decode_tokens_s: float
    ) -> float:
        """Instances of `capacity`'s role (and shape) that the demand fills completely.

        Prefill and decode pools, and a mixed pool with only one kind of demand, take the
        single-resource answer (`utilisation`). A mixed pool with both: the largest step that
        carries decodes and prefill tokens in the demand's ratio and fits the step budget and
        the scheduler's limits (KV cache at the mean decode context, `max_num_seqs`, the chunk
        and step token budgets) serves `decodes / step time` and `prefill tokens / step time`;
        the load is the demand over that, for the kind that binds. This is the smallest `n`
        for which `n` such instances, each running `1/n` of the decodes, still have room in
        every step for `1/n` of the prefill. Linear in the demand (so headroom scales it) and
        monotone in each kind, up to the rounding of one step's counts."""
        prefill_tokens_s, decode_tokens_s = max(prefill_tokens_s, 0.0), max(decode_tokens_s, 0.0)
        if capacity.role != "mixed" or prefill_tokens_s == 0 or decode_tokens_s == 0:
            return capacity.utilisation(prefill_tokens_s, decode_tokens_s)
        features = self._largest_joint_step(
            capacity, decode_tokens_s / (prefill_tokens_s + decode_tokens_s)
        )
        if features is None:
            return math.inf
        step_s = self.cost_model.predict(features)
        # The binding kind of demand sets the load (rounding skews the step's ratio a little);
        # a kind too small to get one token of that step is charged on its own, on top.
        joint, extra = 0.0, 0.0
        for demand, per_step, alone in (
            (decode_tokens_s, features.num_decodes, capacity.utilisation(0.0, decode_tokens_s)),
            (
                prefill_tokens_s,
                features.num_prefill_tokens,
                capacity.utilisation(prefill_tokens_s, 0.0),
            ),
        ):
            if per_step:
                joint = max(joint, demand * step_s / per_step)
            else:
                extra += alone
        return joint + extra

    def _largest_joint_step(
        self, capacity: InstanceCapacity, decode_share: float
    ) -> StepFeatures | None:
        """The largest step of a mixed instance carrying decodes and prefill tokens in the
        ratio `decode_share` that fits the step budget and the scheduler's limits; None when not
        even one token does."""
        config = replace(self.scheduler_config, role="mixed")
        decode_ctx = capacity.decode_context_tokens
        prefill_ctx = capacity.prefill_context_tokens
        decode_limit = min(
            config.max_num_seqs, int(self.kv_cache_tokens // max(decode_ctx + 1.0, 1.0))
        )
        chunk_limit = config.max_num_batched_tokens
        if config.max_prefill_chunk is not None:
            chunk_limit = min(chunk_limit, config.max_prefill_chunk)

        def step(tokens: int) -> StepFeatures | None:
            """A step of `tokens` in the demand's ratio; None when it breaks a limit."""
            num_decodes = int(decode_share * tokens + 0.5)  # non-decreasing in `tokens`
            num_prefill = tokens - num_decodes  # so is this
            if num_decodes > decode_limit or num_prefill > chunk_limit:
                return None
            features = _decodes(num_decodes, decode_ctx)
            return features.with_prefill(num_prefill, prefill_ctx) if num_prefill else features

        def fits(tokens: int) -> bool:
            features = step(tokens)
            return (
                features is not None and self.cost_model.predict(features) <= capacity.step_budget_s
            )

        limit = config.max_num_batched_tokens
        if limit < 1 or not fits(1):
            return None
        low, high = 1, limit + 1  # fits(low), not fits(high) (past the token limit)
        if fits(limit):
            low = limit
        while high - low > 1:
            mid = (low + high) // 2
            if fits(mid):
                low = mid
            else:
                high = mid
        return step(low)  # not None: fits(low)

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
    ) -> tuple[float, int, float, int]:
        """Prefill tokens/s, chunk, step time and the context charged to the chunk."""
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
            return 0.0, 0, 0.0, ctx
        step_s = self.cost_model.predict(StepFeatures().with_prefill(chunk, ctx))
        return chunk / step_s, chunk, step_s, ctx

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
