"""The step latency model's contract: how long one engine step takes for a batch shape.

A batch is summarised by additive features so a scheduler can grow a candidate batch one request
at a time in O(1) and ask for its predicted time; `DESIGN.md` §3 gives the profiled form

    t = c0 + c1*sum(new) + c2*sum(new*(ctx + new/2)) + c3*num_decodes + c4*sum(decode_ctx)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class StepFeatures:
    """Additive summary of a batch: prefill chunks `(new, ctx_before)` and decodes `(ctx)`."""

    num_prefill_tokens: int = 0  # sum(new) over prefill chunks
    prefill_attn_tokens2: float = 0.0  # sum(new * (ctx_before + new/2)): attention work
    prefill_ctx_tokens: int = 0  # sum(ctx_before + new): KV read by prefill chunks
    num_decodes: int = 0  # decode tokens (one per decoding request)
    decode_ctx_tokens: int = 0  # sum(ctx) over decodes: KV read by decodes

    def add_prefill(self, num_new_tokens: int, num_context_tokens: int) -> None:
        self.num_prefill_tokens += num_new_tokens
        self.prefill_attn_tokens2 += num_new_tokens * (num_context_tokens + num_new_tokens / 2)
        self.prefill_ctx_tokens += num_context_tokens + num_new_tokens

    def add_decode(self, num_context_tokens: int) -> None:
        self.num_decodes += 1
        self.decode_ctx_tokens += num_context_tokens

    def with_prefill(self, num_new_tokens: int, num_context_tokens: int) -> StepFeatures:
        copy = self.copy()
        copy.add_prefill(num_new_tokens, num_context_tokens)
        return copy

    def copy(self) -> StepFeatures:
        return StepFeatures(
            self.num_prefill_tokens,
            self.prefill_attn_tokens2,
            self.prefill_ctx_tokens,
            self.num_decodes,
            self.decode_ctx_tokens,
        )

    @property
    def is_empty(self) -> bool:
        return self.num_prefill_tokens == 0 and self.num_decodes == 0

    @classmethod
    def of(
        cls, prefills: list[tuple[int, int]] | None = None, decodes: list[int] | None = None
    ) -> StepFeatures:
        """Features of prefill chunks `(new, ctx_before)` and decode context lengths."""
        features = cls()
        for new, ctx in prefills or []:
            features.add_prefill(new, ctx)
        for ctx in decodes or []:
            features.add_decode(ctx)
        return features


class StepCostModel(Protocol):
    """Predicts the seconds one step takes. Monotone non-decreasing in every feature."""

    def predict(self, features: StepFeatures) -> float:
        """Seconds for one step over a batch with these features."""
        ...


def largest_chunk(
    model: StepCostModel,
    base: StepFeatures,
    num_context_tokens: int,
    max_tokens: int,
    budget_s: float,
) -> int:
    """The largest prefill chunk (<= max_tokens), added to `base` at `num_context_tokens`, whose
    step fits in `budget_s`. Bisection works for any monotone model; 0 when nothing fits."""
    if max_tokens <= 0:
        return 0
    if model.predict(base.with_prefill(max_tokens, num_context_tokens)) <= budget_s:
        return max_tokens
    low, high = 0, max_tokens  # predict(low) fits (or low == 0), predict(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        if model.predict(base.with_prefill(mid, num_context_tokens)) <= budget_s:
            low = mid
        else:
            high = mid
    return low


def max_prefill_tokens(
    model: StepCostModel,
    features_base: StepFeatures,
    ctx_before: int,
    budget_s: float,
    max_tokens: int,
) -> int:
    """`largest_chunk` through the model's own solver when it has one (`max_prefill_tokens`
    method: closed form, same answer), else by bisection."""
    solver = getattr(model, "max_prefill_tokens", None)
    if solver is not None:
        return int(solver(features_base, ctx_before, budget_s, max_tokens))
    return largest_chunk(model, features_base, ctx_before, max_tokens, budget_s)
