"""What one instance sustains, from the latency model: the inverse question (DESIGN.md §6).

Prefill: the rate the instance scheduler itself plans its queue at (`budgeted_prefill_rate`, the
rule the dispatcher reads too): the largest chunk that fits its step bound (a prefill
instance's target step time; a mixed instance's tightest TPOT less `tpot_margin`), over that
step's predicted time, less `prefill_rate_margin`. Sizing pools for a faster rate than the
scheduler plans would leave it judging late work the scaler counts as on time.
Decode: tokens/s at the largest batch whose step fits the scheduler's mean step next to the
tightest TPOT served (`mean_step_s`: that TPOT less `tpot_margin`), bounded by the KV
cache at the observed mean context and by the scheduler's batch limits; found by bisection on
`predict`, so any monotone latency model works.

A mixed instance runs its decodes and a prefill chunk in the same step, so they share the step's
weight reads: summing the two single-resource fractions (`utilisation`) overstates its load (at
the day peak by about a third). `CapacityModel.load_instances` instead asks how many instances the
joint demand fills: one step of a mixed instance carries decodes and prefill tokens in the
demand's ratio, within the step budget (the tightest TPOT), and sustains its decodes over its
predicted time; next to those decodes the scheduler plans prefill at `budgeted_prefill_rate`.
That is exact for a pure load (the single-resource answer) and linear in the demand, so headroom
still scales it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.scheduler.config import Role, SchedulerConfig
from hyperflexis.scheduler.feasibility import budgeted_prefill_rate
from hyperflexis.scheduler.step_budget import mean_step_s


@dataclass(frozen=True, slots=True)
class InstanceCapacity:
    """What one instance of `role` sustains at one workload shape."""

    role: Role  # the role it was computed for
    prefill_tokens_s: float  # prompt tokens/s the scheduler plans without decodes; 0 for decode
    decode_tokens_s: float  # output tokens/s at the largest decode batch; 0 for prefill
    max_decode_batch: int  # that batch: fits the TPOT, the KV cache and max_num_seqs
    decode_step_s: float  # predicted time of a step of that batch
    step_budget_s: float = math.inf  # a mixed instance's step budget: its tightest TPOT
    tightest_tpot_s: float = math.inf  # the TPOT its prefill rate is planned at; inf: none
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
            parts.append(f"prefill {self.prefill_tokens_s:.0f} tok/s (budgeted)")
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
        (None: no decode target known, steps bounded by `max_step_s`). The prefill rate is the
        scheduler's at context 0, as it plans it, whatever the prompts' length."""
        config = replace(self.scheduler_config, role=role)
        tpot_s = tightest_tpot_s or math.inf
        prefill_tokens_s = 0.0
        decode_tokens_s, batch, decode_step_s = 0.0, 0, 0.0
        if role != "decode":
            prefill_tokens_s = budgeted_prefill_rate(
                self.cost_model, StepFeatures(), tpot_s, config
            )
        if role != "prefill":
            decode_tokens_s, batch, decode_step_s = self._decode(
                config, mean_step_s(tpot_s, config), mean_decode_context_tokens
            )
        return InstanceCapacity(
            role,
            prefill_tokens_s,
            decode_tokens_s,
            batch,
            decode_step_s,
            step_budget_s=mean_step_s(tpot_s, config),
            tightest_tpot_s=tpot_s,
            decode_context_tokens=mean_decode_context_tokens,
        )

    def load_instances(
        self, capacity: InstanceCapacity, prefill_tokens_s: float, decode_tokens_s: float
    ) -> float:
        """Instances of `capacity`'s role (and shape) that the demand fills completely.

        Prefill and decode pools, and a mixed pool with only one kind of demand, take the
        single-resource answer (`utilisation`). A mixed pool with both: `n` instances each
        running a step that carries decodes and prefill tokens in the demand's ratio serve
        `n x decodes / step time`; next to those decodes the scheduler plans prefill at
        `budgeted_prefill_rate`. The load is the larger of the two kinds' needs. A larger step
        (up to the step budget and the scheduler's limits: KV cache at the mean decode context,
        `max_num_seqs`, the chunk and step token budgets) serves decodes with fewer instances
        but leaves less room for prefill, so the load is least where the two needs meet: found
        by bisection on the step's tokens. Linear in the demand (so headroom scales it) and
        monotone in each kind, up to the rounding of one step's counts."""
        prefill_tokens_s, decode_tokens_s = max(prefill_tokens_s, 0.0), max(decode_tokens_s, 0.0)
        if capacity.role != "mixed" or prefill_tokens_s == 0 or decode_tokens_s == 0:
            return capacity.utilisation(prefill_tokens_s, decode_tokens_s)
        shape = self._joint_shape(capacity, decode_tokens_s / (prefill_tokens_s + decode_tokens_s))
        high = self._largest_joint_tokens(capacity, shape)
        if high == 0:
            return math.inf

        def needs(tokens: int) -> _Needs:
            return self._joint_needs(
                capacity, shape.step(tokens), prefill_tokens_s, decode_tokens_s
            )

        if not needs(high).prefill_binds:  # the largest step leaves prefill room
            return needs(high).load
        low = 0  # decodes bind at needs(low) (0: at none), prefill at needs(high)
        while high - low > 1:
            mid = (low + high) // 2
            if needs(mid).prefill_binds:
                high = mid
            else:
                low = mid
        return min(needs(tokens).load for tokens in (low, high) if tokens > 0)

    def _joint_shape(self, capacity: InstanceCapacity, decode_share: float) -> _JointShape:
        config = self.scheduler_config
        decode_ctx = capacity.decode_context_tokens
        chunk_limit = config.max_num_batched_tokens
        if config.max_prefill_chunk is not None:
            chunk_limit = min(chunk_limit, config.max_prefill_chunk)
        return _JointShape(
            decode_share=decode_share,
            decode_context_tokens=decode_ctx,
            max_decodes=min(
                config.max_num_seqs, int(self.kv_cache_tokens // max(decode_ctx + 1.0, 1.0))
            ),
            max_prefill_tokens=chunk_limit,
        )

    def _largest_joint_tokens(self, capacity: InstanceCapacity, shape: _JointShape) -> int:
        """Tokens of the largest step of `shape` that fits the step budget and the scheduler's
        limits; 0 when not even one token does."""

        def fits(tokens: int) -> bool:
            features = shape.step(tokens)
            return (
                features is not None and self.cost_model.predict(features) <= capacity.step_budget_s
            )

        limit = self.scheduler_config.max_num_batched_tokens
        if limit < 1 or not fits(1):
            return 0
        low, high = 1, limit + 1  # fits(low), not fits(high) (past the token limit)
        if fits(limit):
            low = limit
        while high - low > 1:
            mid = (low + high) // 2
            if fits(mid):
                low = mid
            else:
                high = mid
        return low

    def _joint_needs(
        self,
        capacity: InstanceCapacity,
        features: StepFeatures | None,
        prefill_tokens_s: float,
        decode_tokens_s: float,
    ) -> _Needs:
        """What the demand needs when every instance runs `features`."""
        if features is None:  # not reached: only steps within the limits are asked for
            return _Needs(math.inf, math.inf, 0.0)
        decode_need, prefill_need, alone = 0.0, 0.0, 0.0
        if features.num_decodes:
            decode_need = decode_tokens_s * self.cost_model.predict(features) / features.num_decodes
        else:
            alone += capacity.utilisation(0.0, decode_tokens_s)
        if features.num_prefill_tokens:
            decodes = _decodes(features.num_decodes, capacity.decode_context_tokens)
            config = replace(self.scheduler_config, role="mixed")
            rate = budgeted_prefill_rate(self.cost_model, decodes, capacity.tightest_tpot_s, config)
            prefill_need = prefill_tokens_s / rate if rate > 0 else math.inf
        else:
            alone += capacity.utilisation(prefill_tokens_s, 0.0)
        return _Needs(decode_need, prefill_need, alone)

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


@dataclass(frozen=True, slots=True)
class _Needs:
    """Instances a mixed demand needs when every instance runs one step of its ratio."""

    decodes: float  # for the decodes the step carries: decode tokens/s x step time / decodes
    prefill: float  # for the prefill the scheduler plans next to those decodes
    alone: float  # a kind too small to get one token of the step, charged on its own, on top

    @property
    def prefill_binds(self) -> bool:
        return self.prefill > self.decodes

    @property
    def load(self) -> float:
        return max(self.decodes, self.prefill) + self.alone


@dataclass(frozen=True, slots=True)
class _JointShape:
    """Steps of a mixed instance that carry decodes and prefill tokens in the demand's ratio."""

    decode_share: float  # decodes per token of the step
    decode_context_tokens: float  # mean context of a decode
    max_decodes: int  # the KV cache at that context, and max_num_seqs
    max_prefill_tokens: int  # the chunk budget

    def step(self, tokens: int) -> StepFeatures | None:
        """A step of `tokens` in the ratio; None when it breaks a limit."""
        num_decodes = int(self.decode_share * tokens + 0.5)  # non-decreasing in `tokens`
        num_prefill = tokens - num_decodes  # so is this
        if num_decodes > self.max_decodes or num_prefill > self.max_prefill_tokens:
            return None
        features = _decodes(num_decodes, self.decode_context_tokens)
        return features.with_prefill(num_prefill, 0) if num_prefill else features
