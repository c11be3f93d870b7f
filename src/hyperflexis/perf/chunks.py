"""Closed-form chunk sizing shared by the latency models.

Adding a prefill chunk of `n` tokens grows every model's step time by a quadratic in `n` with
non-negative coefficients (attention is the `n^2` term), so the largest chunk within a budget is a
root of a quadratic. Floating point can put that root one token off, so the answer is checked
against `predict` and nudged; a model whose answer is further off falls back to bisection.
"""

from __future__ import annotations

import math

from hyperflexis.perf.base import StepCostModel, StepFeatures, largest_chunk

_MAX_NUDGES = 4  # a closed form more than this many tokens off means a bug: bisect instead


def largest_root(a: float, b: float, slack: float) -> float:
    """The largest x >= 0 with `a*x^2 + b*x <= slack` (a, b >= 0); inf when nothing grows."""
    if slack <= 0:
        return 0.0
    if slack == math.inf:
        return math.inf
    if a <= 0:
        return math.inf if b <= 0 else slack / b
    # 2c / (b + sqrt(b^2 + 4ac)): the stable form of the positive root, no cancellation.
    return 2 * slack / (b + math.sqrt(b * b + 4 * a * slack))


def refine_chunk(
    model: StepCostModel,
    base: StepFeatures,
    ctx_before: int,
    budget_s: float,
    max_tokens: int,
    estimate: float,
) -> int:
    """The exact `largest_chunk` answer, starting from a closed-form `estimate`."""
    if max_tokens <= 0 or math.isnan(budget_s):
        return 0
    n = 0 if math.isnan(estimate) else int(min(max(estimate, 0.0), float(max_tokens)))
    for _ in range(_MAX_NUDGES):
        if n > 0 and model.predict(base.with_prefill(n, ctx_before)) > budget_s:
            n -= 1
        elif n < max_tokens and model.predict(base.with_prefill(n + 1, ctx_before)) <= budget_s:
            n += 1
        else:
            return n
    return largest_chunk(model, base, ctx_before, max_tokens, budget_s)
