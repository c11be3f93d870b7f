"""A fluid upper bound on goodput@90 (issue 18, item 10): the rate past which no policy can serve
90% of the requests in time, on a deployment and a workload, from the latency model alone.

At rate R at least 90% of the requests must be served; the cheapest 90% of them need W(R)
instance-seconds per second, and the bound is the R at which W(R) equals the instances (per pool
in P/D; the smaller pool rate). Each request costs, in the latency model's terms:

- its prefill, as the whole prompt in one chunk, *beyond an empty step* (a step's fixed costs,
  the weights' read included, are paid by the decodes it rides with);
- each output token after the first, as 1/b of a decode step of b requests at the request's
  mean decode context, b the largest batch whose step fits the class's TPOT (a request whose
  steps average more than its TPOT misses its mean TPOT; equal steps are cheapest per token).

A roofline model (`perf.analytic`) splits a step into compute, memory and unhidden time, each
additive; a step costs the larger of the first two plus the third, so the work of many steps
costs at least max(sum of compute, sum of memory) + sum of the rest, and W takes that form over
the cheapest requests by each resource. Other models (linear: profiled, fixed) have one resource.

Everything else is relaxed, so the bound is optimistic: KV capacity, TTFT deadlines, batching
across classes, arrival bursts and the drain after the last arrival are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.sim.setup import SimSetup, cost_model_for
from hyperflexis.workloads.spec import Workload

TARGET = 0.9  # goodput@90
MAX_BATCH = 1 << 14  # the largest decode batch searched for
_STEADY_ITERATIONS = 8
_STEADY_TOLERANCE = 0.005  # relative change of the bound that ends the fixed-point iteration


@runtime_checkable
class _Roofline(Protocol):
    def roofline_parts(self, features: StepFeatures) -> tuple[float, float, float]: ...


@dataclass(frozen=True, slots=True)
class GoodputBound:
    """The bound and how each pool sets it."""

    rate_rps: float  # no policy keeps >= TARGET attainment above this rate
    pool_rates_rps: dict[str, float]  # pool ("mixed", "prefill", "decode") -> rate that fills it
    instance_s_per_request: dict[str, float]  # pool -> W(R) / R, its cheapest share's cost

    def echo(self) -> dict[str, object]:
        return {
            "rate_rps": self.rate_rps,
            "pool_rates_rps": self.pool_rates_rps,
            "instance_s_per_request": self.instance_s_per_request,
        }


def goodput_bound(
    setup: SimSetup, classes: SLOClasses, workload: Workload, target: float = TARGET
) -> GoodputBound:
    """The bound for `workload`'s mix of requests on `setup` (its rate does not matter: W(R)
    is R times the cost of the cheapest `target` share of these requests)."""
    if not workload:
        raise ValueError("invalid workload: it has no requests")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"invalid parameter 'target': expected a fraction in (0, 1], got {target}")
    model = cost_model_for(setup)
    prefill, decode = request_costs(model, classes, workload)
    deployment = setup.deployment
    if deployment.is_disaggregated:
        pools = {
            "prefill": (prefill, deployment.num_prefill),
            "decode": (decode, deployment.num_decode),
        }
    else:
        pools = {"mixed": (prefill + decode, deployment.num_mixed)}
    costs = {name: _cheapest_share(parts, target) for name, (parts, _) in pools.items()}
    rates = {
        name: count / costs[name] if costs[name] > 0 else math.inf
        for name, (_, count) in pools.items()
    }
    return GoodputBound(min(rates.values()), rates, costs)


def steady_goodput_bound(
    setup: SimSetup,
    classes: SLOClasses,
    workload_at: Callable[[float], Workload],
    start_rate_rps: float,
    target: float = TARGET,
) -> GoodputBound:
    """The bound where the workload depends on the rate (a steady-state sweep offers more of the
    trace at higher rates): the fixed point R = bound(workload_at(R)), from `start_rate_rps`."""
    rate = start_rate_rps
    bound = goodput_bound(setup, classes, workload_at(rate), target)
    for _ in range(_STEADY_ITERATIONS):
        if not math.isfinite(bound.rate_rps) or abs(bound.rate_rps - rate) <= (
            _STEADY_TOLERANCE * rate
        ):
            break
        rate = bound.rate_rps
        bound = goodput_bound(setup, classes, workload_at(rate), target)
    return bound


def request_costs(
    model: StepCostModel, classes: SLOClasses, workload: Workload
) -> tuple[np.ndarray, np.ndarray]:
    """Per request (rows, in workload order), the (compute, memory, other) seconds of its prefill
    and of its decode, as the module docstring prices them."""
    empty = _parts(model, StepFeatures())
    tpot = {name: classes.resolve(name).tpot_s for name in {s.slo_class for s in workload}}
    batch = {
        name: _largest_batch(model, tau, _mean_ctx(workload, name)) for name, tau in tpot.items()
    }
    prefill = np.zeros((len(workload), 3))
    decode = np.zeros((len(workload), 3))
    for i, spec in enumerate(workload):
        prefill[i] = _parts(model, StepFeatures().with_prefill(spec.prompt_len, 0)) - empty
        if spec.output_len > 1:
            b = batch[spec.slo_class]
            step = _parts(model, _decodes(b, _decode_ctx(spec.prompt_len, spec.output_len)))
            decode[i] = (spec.output_len - 1) * step / b
    return prefill, decode


def _cheapest_share(parts: np.ndarray, target: float) -> float:
    """Instance-seconds per offered request for the cheapest `target` share, by each resource:
    max over compute and memory of the sum of the smallest (resource + other), over all."""
    count = math.ceil(target * len(parts) - 1e-9)
    sums = [float(np.sort(parts[:, k] + parts[:, 2])[:count].sum()) for k in (0, 1)]
    return max(sums) / len(parts)


def _parts(model: StepCostModel, features: StepFeatures) -> np.ndarray:
    if isinstance(model, _Roofline):
        return np.asarray(model.roofline_parts(features), dtype=np.float64)
    return np.asarray((0.0, 0.0, model.predict(features)), dtype=np.float64)


def _largest_batch(model: StepCostModel, tpot_s: float, ctx: int) -> int:
    """The most decodes at context `ctx` whose step fits `tpot_s` (1 when none does)."""
    low, high = 1, MAX_BATCH
    if model.predict(_decodes(high, ctx)) <= tpot_s:
        return high
    while high - low > 1:  # predict(low) fits (or low is 1), predict(high) does not
        mid = (low + high) // 2
        if model.predict(_decodes(mid, ctx)) <= tpot_s:
            low = mid
        else:
            high = mid
    return low


def _decodes(num: int, ctx: int) -> StepFeatures:
    return StepFeatures(num_decodes=num, decode_ctx_tokens=num * ctx)


def _decode_ctx(prompt_len: int, output_len: int) -> int:
    """A request's mean context over its decode steps (prompt plus half its output)."""
    return prompt_len + output_len // 2


def _mean_ctx(workload: Workload, slo_class: str) -> int:
    ctxs = [_decode_ctx(s.prompt_len, s.output_len) for s in workload if s.slo_class == slo_class]
    return round(sum(ctxs) / len(ctxs))
