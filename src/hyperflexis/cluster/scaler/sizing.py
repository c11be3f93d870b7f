"""Pool sizing for the cost-aware scaler (DESIGN.md §6): pure, from one interval's observation to
one pool's plan (`size_pool` -> `PoolPlan`); which actions reach it is `hyperflexis`'s part.

1. Demand to plan for: prompt and output tokens/s forecast one start-up plus one interval ahead
   (a straight line through the window when its slope is significant, never below the window
   mean), plus the late work: prompt tokens of queued prefills that will miss their deadline at
   the pool's capacity (`late_work_tokens`). It has missed already, so clearing it faster buys
   no attainment: it is cleared over the shortest life of an instance started for it (start-up
   plus the longer of cooldown and scale-in window), the cheapest count that clears it.
2. Capacity of one instance from the latency model (`capacity`); the demand fills `U` instances
   (`CapacityModel.load_instances`: a mixed instance's decodes and prefill chunks share a step).
   Predicted attainment with `n` instances is `min(1, n / (U * (1 + headroom)))`, a fluid model
   with headroom for bursts; the pool needs the smallest `n` that reaches this window's target.
   That is the error budget's (`budget`): `target_attainment` is promised over a long horizon
   (`budget_horizon_s`), so while the finishes there leave budget to spare, a window's growth is
   planned for less, down to `budget_floor`, and back at the full target once the misses spend
   it (scale-in keeps the full target). The burst headroom is an online correction: while the
   window's requests met the target and no queued prefill will miss its deadline, the model's
   load is evidently servable and the pool is sized with `calm_headroom` (default none); once
   the SLOs show misses, with `headroom`. Misses within a window of the pool serving fewer
   instances than the model asked for are the shortage's, not the model's, and raise no
   headroom (a cold start under load would otherwise over-size).
3. Three counts, one per purpose (`PoolPlan`): the count growth aims at (the demand now and its
   forecast, without the window-mean floor: starting an instance on a significant fall buys
   nothing), the count a scale-in may keep (the full target for the demand now and the window's
   noise: the fluid model with a queue over the window's bins, `fluid_attainment`), and the
   floor no scale-in goes below (the planned demand, window-mean floor and late work included:
   the hysteresis on a fall).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from hyperflexis.cluster.scaler.capacity import CapacityModel, InstanceCapacity
from hyperflexis.cluster.scaler.config import HyperFlexisScalerConfig
from hyperflexis.cluster.scaler.decision import PoolLimits
from hyperflexis.cluster.scaler.forecast import Trend
from hyperflexis.cluster.scaler.observe import Observation, late_work_tokens
from hyperflexis.scheduler.config import Role


@dataclass(frozen=True, slots=True)
class Outlook:
    """One control interval's look-ahead and target, the same for every pool."""

    now_s: float  # the driver's clock at this interval
    horizon_s: float  # demand is forecast this far ahead: one start-up plus one interval
    clear_s: float  # late work is cleared over this long: the shortest life of a new instance
    target_attainment: float  # this window's planned attainment (the error budget's)


@dataclass(frozen=True, slots=True)
class PoolState:
    """What sizing needs to know of one pool besides the observation."""

    role: Role  # the pool
    limits: PoolLimits  # its size bounds
    num_planned: int  # instances it has once transitions under way complete
    num_serving: int  # instances active now
    last_short_s: float | None  # when fewer served than the model asked for; None: never


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """One pool's sizing at one control interval, with the arithmetic for the logs."""

    role: Role  # the pool
    prefill_tokens_s: float  # prompt tokens/s to plan for (forecast plus backlog)
    decode_tokens_s: float  # output tokens/s to plan for (forecast)
    backlog_tokens: int  # pending prefill tokens that would miss their deadline now
    capacity: InstanceCapacity  # of one instance at the observed shape
    load_instances: float  # instances the planned demand fills completely (U)
    headroom: float  # the scale-out headroom the counts below keep
    target_attainment: float  # this window's planned attainment (the error budget's)
    # Fewest reaching this window's target for the planned demand (window-mean floor and late
    # work included): no scale-in goes below it, the hysteresis on a fall.
    num_scale_in_floor: int
    # Fewest reaching the full target for the demand now and the window's noise, with
    # `scale_in_headroom`: a pool shrinks only to the most of these over a scale-in window.
    num_to_keep: int
    # Fewest reaching this window's target for the demand now and its forecast (no mean floor):
    # a pool with fewer planned grows to it, and a role-switch donor keeps it.
    num_to_grow_to: int
    num_planned: int  # instances it has once transitions under way complete
    is_short: bool  # fewer serve now than the model asks for the forecast (a shortage)

    def predicted_attainment(self, num_instances: int) -> float:
        if self.load_instances <= 0:
            return 1.0
        return min(1.0, num_instances / (self.load_instances * (1 + self.headroom)))

    def describe(self) -> str:
        demand = []
        if self.prefill_tokens_s > 0 or self.capacity.prefill_tokens_s > 0:
            demand.append(f"prefill {self.prefill_tokens_s:.0f} tok/s")
        if self.decode_tokens_s > 0 or self.capacity.decode_tokens_s > 0:
            demand.append(f"decode {self.decode_tokens_s:.0f} tok/s")
        backlog = f" (incl. backlog {self.backlog_tokens} tok)" if self.backlog_tokens else ""
        return (
            f"{self.role}: demand {' + '.join(demand)}{backlog} / per-instance "
            f"{self.capacity.describe()} = {self.load_instances:.2f} instances; "
            f"x{1 + self.headroom:.2f} headroom at target {self.target_attainment:.3f} -> need "
            f"{self.num_scale_in_floor} "
            f"(keep >= {self.num_to_keep}, now {self.num_to_grow_to}), planned "
            f"{self.num_planned}, predicted attainment "
            f"{self.predicted_attainment(self.num_planned):.3f}"
        )


@dataclass(frozen=True, slots=True)
class _Rates:
    """One kind of demand, tokens/s (0 for a kind the pool does not serve)."""

    ahead: float  # the forecast, never below the window mean (`Trend.ahead`)
    now: float  # the demand now and its forecast, without the mean floor


def _rates(trend: Trend, horizon_s: float, served: bool) -> _Rates:
    if not served:
        return _Rates(0.0, 0.0)
    return _Rates(trend.ahead(horizon_s), max(trend.level, trend.at(horizon_s)))


def size_pool(
    pool: PoolState,
    observation: Observation,
    model: CapacityModel,
    config: HyperFlexisScalerConfig,
    outlook: Outlook,
) -> PoolPlan:
    """The pool's plan for this interval (module docstring, steps 1-3)."""
    role, target, limits = pool.role, outlook.target_attainment, pool.limits
    capacity = model.capacity(
        role,
        observation.mean_prompt_tokens,
        observation.mean_decode_context_tokens,
        observation.tightest_tpot_s,
    )
    backlog = _backlog_tokens(role, observation, outlook.now_s, capacity.prefill_tokens_s)
    prefill = _rates(observation.prefill_tokens, outlook.horizon_s, role != "decode")
    decode = _rates(observation.decode_tokens, outlook.horizon_s, role != "prefill")
    # The late work has missed its deadline at the pool's capacity; clearing it sooner buys
    # no attainment, so it is cleared over the shortest life of an instance started for it.
    backlog_s = backlog / outlook.clear_s
    prefill_s = prefill.ahead + backlog_s if role != "decode" else 0.0
    load = model.load_instances(capacity, prefill_s, decode.ahead)  # the planned demand's
    load_now = model.load_instances(  # growth's: the demand now, no window-mean floor
        capacity, prefill.now + backlog_s if role != "decode" else 0.0, decode.now
    )
    # Misses while fewer instances served than the model itself asked for (for the forecast
    # alone) are the shortage's, not the model's: they raise no headroom.
    load_forecast = model.load_instances(capacity, prefill.ahead, decode.ahead)
    is_short = pool.num_serving < count_for(
        load_forecast, config.calm_or_default_headroom, target, limits
    )
    short_s = outlook.now_s if is_short else pool.last_short_s
    headroom = _headroom(config, observation, outlook, has_late_work=backlog > 0, short_s=short_s)
    return PoolPlan(
        role=role,
        prefill_tokens_s=prefill_s,
        decode_tokens_s=decode.ahead,
        backlog_tokens=backlog,
        capacity=capacity,
        load_instances=load,
        headroom=headroom,
        target_attainment=target,
        num_scale_in_floor=count_for(load, headroom, target, limits),
        num_to_keep=_num_to_keep(
            model,
            capacity,
            observation,
            config,
            limits,
            prefill_now=prefill.now,
            decode_now=decode.now,
        ),
        num_to_grow_to=count_for(load_now, headroom, target, limits),
        num_planned=pool.num_planned,
        is_short=is_short,
    )


def _backlog_tokens(role: Role, observation: Observation, now: float, rate_tokens_s: float) -> int:
    """Prompt tokens queued in the pool that will miss their deadline at `rate_tokens_s`."""
    if role == "decode":
        return 0
    return sum(
        late_work_tokens(snap, now, rate_tokens_s)
        for snap in observation.snapshots_by_role.get(role, ())
    )


def _headroom(
    config: HyperFlexisScalerConfig,
    observation: Observation,
    outlook: Outlook,
    *,
    has_late_work: bool,
    short_s: float | None,
) -> float:
    """The online correction: while the window's requests met the target and nothing queued
    will miss its deadline (no `has_late_work`), or within a window of a shortage (`short_s`),
    the calm headroom; otherwise the burst headroom."""
    attainment = observation.attainment
    calm = (
        attainment is not None and attainment >= outlook.target_attainment and not has_late_work
    ) or (short_s is not None and outlook.now_s - short_s < config.window_s)
    return config.calm_or_default_headroom if calm else config.headroom


def _num_to_keep(
    model: CapacityModel,
    capacity: InstanceCapacity,
    observation: Observation,
    config: HyperFlexisScalerConfig,
    limits: PoolLimits,
    *,
    prefill_now: float,
    decode_now: float,
) -> int:
    """Fewest a scale-in may keep (`PoolPlan.num_to_keep`)."""
    # Scale-in judges the demand now and its forecast, without the window-mean floor or the
    # backlog: both lag a fall by most of a window, and the scale-in window already asks
    # that the lower need held for that long (hysteresis) before a pool shrinks. ... And the
    # window's noise around its trend: each bin's ratio to the line scales the demand now (the
    # same bins for both rates; a rate without bins counts as steady).
    noise = itertools.zip_longest(
        observation.prefill_tokens.noise(), observation.decode_tokens.noise(), fillvalue=1.0
    )
    loads = [
        model.load_instances(capacity, prefill_now * p, decode_now * d)
        * (1 + config.scale_in_headroom)
        for p, d in noise
    ] or [model.load_instances(capacity, prefill_now, decode_now)]
    # Bursts within a bin wait in the queue within the requests' first-token slack.
    slack_bins = observation.mean_ttft_s / config.bin_s
    return fewest_for(loads, config.target_attainment, limits, slack_bins)


def count_for(load: float, headroom: float, target_attainment: float, limits: PoolLimits) -> int:
    """Fewest instances whose predicted attainment for `load` with `headroom` reaches the
    target, within the pool's limits."""
    if load <= 0:
        return limits.min_instances
    if not math.isfinite(load):
        return limits.max_instances
    # 1e-9: a load of exactly n instances needs n, not n + 1, despite rounding.
    count = math.ceil(load * (1 + headroom) * target_attainment - 1e-9)
    return min(max(count, limits.min_instances), limits.max_instances)


def fluid_attainment(num_instances: int, loads: Sequence[float], slack_bins: float = 0.0) -> float:
    """Predicted attainment of `num_instances` for a demand that fills `loads` instances in
    equal-length intervals (bins), 1.0 without demand: the fluid model with a queue. Work above
    the count waits, up to `slack_bins` bins of the count's work (what the requests' deadline
    slack lets wait and still be on time); only work beyond that misses. The bins run twice and
    the second pass counts, so the queue starts near the pattern's steady state: from empty, or
    from full when the pattern brings more work than the count serves (repeated, it would fill
    the queue). Without slack, work above the count in a bin misses; a steady load `L` gives
    `min(1, n / L)` at any slack."""
    total = math.fsum(loads)
    if total <= 0:
        return 1.0
    limit = num_instances * max(slack_bins, 0.0)
    queued = limit if total > num_instances * len(loads) else 0.0
    missed = 0.0
    for k, load in enumerate((*loads, *loads)):
        queued = max(queued + load - num_instances, 0.0)
        over = max(queued - limit, 0.0)
        queued -= over
        if k >= len(loads):
            missed += over
    return max(1.0 - missed / total, 0.0)


def fewest_for(
    loads: Sequence[float], target_attainment: float, limits: PoolLimits, slack_bins: float
) -> int:
    """Fewest instances within the pool's limits whose `fluid_attainment` for `loads` with
    `slack_bins` of queue reaches the target (the pool's maximum when none does)."""
    if any(not math.isfinite(load) for load in loads):
        return limits.max_instances
    for count in range(limits.min_instances, limits.max_instances + 1):
        # 1e-9: a load of exactly n instances needs n, not n + 1, despite rounding.
        if fluid_attainment(count, loads, slack_bins) >= target_attainment - 1e-9:
            return count
    return limits.max_instances
