"""The cost-aware scaler (DESIGN.md §6): the fewest instances per pool whose predicted attainment
stays above the target one start-up ahead, reached by the cheapest actions.

Every control interval, per pool:

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
   it (scale-in keeps the full target: step 3). The burst
   headroom is an online correction: while the window's requests met the target and no queued
   prefill will miss its deadline, the model's load is evidently servable and the pool is sized
   with `calm_headroom` (default none); once the SLOs show misses, with `headroom`. Misses within
   a window of the pool serving fewer instances than the model asked for are the shortage's,
   not the model's, and raise no headroom (a cold start under load would otherwise over-size).
3. Actions, cheapest first. A pool grows only to what the demand now and its forecast need
   (without the window-mean floor: starting an instance on a significant fall buys nothing).
   A short pool takes instances from the other P/D pool when that one has more than that same
   count needs (role switch: no weight reload; the donor is judged as its own growth would
   judge it, so a switch is not followed by a scale-out of the donor), then starts new ones
   (weights from a live peer when there is one). A pool scales in only to a count whose
   predicted attainment still reaches the full target (the promise, not the budget's window
   target: shrinking to the lower target's count put the pool on the boundary where the next
   burst scaled it out again) for the demand now and its noise: the fluid
   model with a queue over the window's bins (`fluid_attainment`: each bin's rate over the
   trend line scales the demand now; work above the count waits within the arrivals' mean
   first-token slack, beyond that it misses), with `scale_in_headroom` on top; no window-mean
   floor, no backlog (both lag a fall). Only after that held for a whole scale-in window, and
   never below step 2's count with the window-mean floor (the hysteresis on a fall). A lower
   target so keeps less spare for the noise.
4. Hysteresis against flapping: a pool that grew (scale-out or a switch into it) does not shrink
   (scale-in or a switch out of it) within a cooldown. Growth is never held back: starting
   instances already count towards the pool, so it cannot repeat itself, and missing SLOs costs
   more than an instance.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from hyperflexis.cluster.scaler.actions import least_loaded, link_plan
from hyperflexis.cluster.scaler.base import Scaler, ScalerContext
from hyperflexis.cluster.scaler.budget import ErrorBudget
from hyperflexis.cluster.scaler.capacity import CapacityModel, InstanceCapacity
from hyperflexis.cluster.scaler.decision import ClusterView, PoolLimits, ScalingDecision
from hyperflexis.cluster.scaler.observe import FinishedRequest, Observation, late_work_tokens
from hyperflexis.cluster.scaler.tracker import flipped
from hyperflexis.scheduler.config import Role


@dataclass(frozen=True, slots=True)
class HyperFlexisScalerConfig:
    control_interval_s: float = 10.0  # how often the driver calls `decide`; part of the look-ahead
    window_s: float = 60.0  # demand is measured over this much history
    bin_s: float = 5.0  # width of one rate sample of the trend fit
    min_observed_s: float = 10.0  # no action before this much demand has been seen
    target_attainment: float = 0.99  # attainment promised over the budget horizon
    budget_floor: float = 0.85  # lowest attainment one window is planned for (error budget)
    budget_horizon_s: float = 3600.0  # the error budget counts finishes over this long
    headroom: float = 0.15  # spare capacity above the forecast when sizing up
    calm_headroom: float | None = (
        0.0  # headroom instead while SLOs are met (None: always `headroom`)
    )
    scale_in_headroom: float = 0.1  # spare kept on a scale-in, above the window's own noise
    scale_in_window_s: float = 20.0  # ... and only after that held for this long
    cooldown_s: float = 20.0  # a pool that grew does not shrink this soon after
    role_switch: bool = True  # flip prefill <-> decode instances instead of starting new ones

    def __post_init__(self) -> None:
        for name in (
            "control_interval_s",
            "window_s",
            "bin_s",
            "scale_in_window_s",
            "budget_horizon_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"invalid scaler field {name!r}: must be > 0")
        for name in ("min_observed_s", "headroom", "scale_in_headroom", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"invalid scaler field {name!r}: must be >= 0")
        if self.bin_s > self.window_s:
            raise ValueError("invalid scaler field 'bin_s': must be <= window_s")
        if not 0 < self.target_attainment <= 1:
            raise ValueError("invalid scaler field 'target_attainment': must be in (0, 1]")
        if not 0 < self.budget_floor <= 1:
            raise ValueError("invalid scaler field 'budget_floor': must be in (0, 1]")
        if self.calm_headroom is not None and not 0 <= self.calm_headroom <= self.headroom:
            raise ValueError("invalid scaler field 'calm_headroom': must be in [0, headroom]")


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """One pool's sizing at one control interval, with the arithmetic for the logs."""

    role: Role  # the pool
    prefill_tokens_s: float  # prompt tokens/s to plan for (forecast plus backlog)
    decode_tokens_s: float  # output tokens/s to plan for (forecast)
    backlog_tokens: int  # pending prefill tokens that would miss their deadline now
    capacity: InstanceCapacity  # of one instance at the observed shape
    load_instances: float  # instances the demand fills completely (U)
    headroom: float  # the scale-out headroom the count below keeps
    target_attainment: float  # this window's planned attainment (the error budget's)
    num_needed: int  # fewest instances reaching the target attainment, within the pool's limits
    num_needed_in: int  # fewest reaching the full target for the demand now and the window's noise
    num_needed_now: int  # as num_needed, for the demand now (no mean floor): growth and donors
    num_planned: int  # instances it has once transitions under way complete

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
            f"{self.num_needed} "
            f"(keep >= {self.num_needed_in}, now {self.num_needed_now}), planned "
            f"{self.num_planned}, predicted attainment "
            f"{self.predicted_attainment(self.num_planned):.3f}"
        )


class HyperFlexisScaler(Scaler):
    name = "hyperflexis"
    config_type = HyperFlexisScalerConfig

    def __init__(self, context: ScalerContext, config: Any = None) -> None:
        self.config: HyperFlexisScalerConfig = config or self.config_type()
        super().__init__(context, config)
        self.capacity_model = CapacityModel(
            context.cost_model, context.scheduler_config, context.instance_kv_tokens
        )
        self._last_grow_s: dict[Role, float] = {}
        self._last_short_s: dict[Role, float] = {}  # last time fewer served than the model needs
        self._needed_in: dict[Role, deque[tuple[float, int]]] = {}  # (time, num_needed_in)
        self._first_decide_s: float | None = None
        self.budget = ErrorBudget(self.config.budget_horizon_s)
        self.last_plans: dict[Role, PoolPlan] = {}  # the latest sizing, for logs and tests
        self.last_observation: Observation | None = None

    def _window(self) -> tuple[float, float]:
        return self.config.window_s, self.config.bin_s

    def observe_finish(self, now: float, record: FinishedRequest) -> None:
        super().observe_finish(now, record)
        self.budget.record(now, record.attained)

    def _decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        config = self.config
        if self._first_decide_s is None:
            self._first_decide_s = now
        observation = self.observer.observe(now)
        self.last_observation = observation
        startup = self.actions.startup.plan(view.instances)
        horizon_s = startup.startup_s + config.control_interval_s
        # An instance started now serves after its start-up and cannot be stopped before the
        # cooldown and a whole scale-in window have passed: late work cleared within that life
        # costs no more instance-seconds than clearing it faster, which needs more instances.
        clear_s = startup.startup_s + max(config.cooldown_s, config.scale_in_window_s)
        members = self.tracker.planned_members(view)
        target = self.budget.target(now, config.target_attainment, config.budget_floor)
        plans = {
            role: self._plan(
                role,
                observation,
                view,
                (horizon_s, clear_s),
                (len(members.get(role, [])), target),
                now,
            )
            for role in sorted(view.pools)
        }
        self.last_plans = plans
        for role, plan in plans.items():
            history = self._needed_in.setdefault(role, deque())
            history.append((now, plan.num_needed_in))
            while history and history[0][0] < now - config.scale_in_window_s:
                history.popleft()
        if observation.covered_s < config.min_observed_s:
            return []

        decisions: list[ScalingDecision] = []
        taken = {i.instance_id for i in view.instances} | self.tracker.pending_ids()
        links = link_plan(view, members)
        short = {
            role: max(plan.num_needed_now - plan.num_planned, 0) for role, plan in plans.items()
        }
        acted: set[Role] = set()
        grew: set[Role] = set()
        attained, finished = self.budget.counts(now)
        suffix = (
            f"{self._suffix(observation, horizon_s)}; error budget: {attained} of {finished} "
            f"attained over {config.budget_horizon_s:.0f} s"
        )

        if config.role_switch and view.is_disaggregated:
            for receiver in ("prefill", "decode"):
                donor = flipped(receiver)
                if receiver not in plans or donor not in plans or short[receiver] == 0:
                    continue
                if self._cooling(donor, now):
                    continue
                surplus = plans[donor].num_planned - plans[donor].num_needed_now
                candidates = least_loaded(view, donor, self.tracker.is_free)
                for instance in candidates[: max(min(short[receiver], surplus), 0)]:
                    reason = (
                        f"role switch {donor}->{receiver}: {plans[receiver].describe()}; "
                        f"{plans[donor].describe()}; {suffix}"
                    )
                    decisions.append(self.actions.role_switch(now, instance, links, reason))
                    short[receiver] -= 1
                    acted.update((receiver, donor))
                    grew.add(receiver)

        for role, plan in plans.items():
            if role in acted or short[role] > 0 or self._cooling(role, now):
                continue
            if now - self._first_decide_s < max(config.scale_in_window_s, config.window_s):
                # Not yet a whole window of evidence that demand stayed low, nor a whole
                # demand window: a ramp's slope is not yet significant in fewer bins.
                continue
            # Never below the count with the window-mean floor (hysteresis on a fall), which is
            # at least what growth wants now, so the next interval cannot undo it.
            floor = max(plan.num_needed, *(n for _, n in self._needed_in[role]))
            surplus = plan.num_planned - floor
            if surplus <= 0:
                continue
            for instance in least_loaded(view, role, self.tracker.is_free)[:surplus]:
                reason = (
                    f"scale in {plan.describe()}; needed at most {floor} over the last "
                    f"{config.scale_in_window_s:.0f} s; {suffix}"
                )
                decisions.append(self.actions.scale_in(now, instance, links, reason))
                acted.add(role)

        for role, plan in plans.items():
            for _ in range(short[role]):
                reason = f"scale out {plan.describe()}; {suffix}"
                decisions.append(self.actions.scale_out(now, view, role, links, taken, reason))
                acted.add(role)
                grew.add(role)

        for role in grew:
            self._last_grow_s[role] = now
        return decisions

    def _plan(
        self,
        role: Role,
        observation: Observation,
        view: ClusterView,
        horizons_s: tuple[float, float],
        planned: tuple[int, float],
        now: float,
    ) -> PoolPlan:
        config = self.config
        horizon_s, clear_s = horizons_s
        num_planned, target = planned  # instances planned; this window's target (the budget's)
        capacity = self.capacity_model.capacity(
            role,
            observation.mean_prompt_tokens,
            observation.mean_decode_context_tokens,
            observation.tightest_tpot_s,
        )
        backlog = 0
        if role != "decode":
            backlog = sum(
                late_work_tokens(snap, now, capacity.prefill_tokens_s)
                for snap in observation.snapshots_by_role.get(role, ())
            )
        uses_prefill, uses_decode = role != "decode", role != "prefill"
        prefill, decode = observation.prefill_tokens, observation.decode_tokens
        # The late work has missed its deadline at the pool's capacity; clearing it sooner buys
        # no attainment, so it is cleared over the shortest life of an instance started for it.
        backlog_s = backlog / clear_s
        prefill_s = prefill.ahead(horizon_s) + backlog_s if uses_prefill else 0.0
        decode_s = decode.ahead(horizon_s) if uses_decode else 0.0
        load = self.capacity_model.load_instances(capacity, prefill_s, decode_s)
        load_now = self.capacity_model.load_instances(
            capacity,
            max(prefill.level, prefill.at(horizon_s)) + backlog_s if uses_prefill else 0.0,
            max(decode.level, decode.at(horizon_s)) if uses_decode else 0.0,
        )
        # Scale-in judges the demand now and its forecast, without the window-mean floor or the
        # backlog: both lag a fall by most of a window, and the scale-in window already asks
        # that the lower need held for that long (hysteresis) before a pool shrinks.
        prefill_in = max(prefill.level, prefill.at(horizon_s)) if uses_prefill else 0.0
        decode_in = max(decode.level, decode.at(horizon_s)) if uses_decode else 0.0
        # ... and the window's noise around its trend: each bin's ratio to the line scales the
        # demand now (the same bins for both rates; a rate without bins counts as steady).
        noise = itertools.zip_longest(prefill.noise(), decode.noise(), fillvalue=1.0)
        loads_in = [
            self.capacity_model.load_instances(capacity, prefill_in * p, decode_in * d)
            * (1 + config.scale_in_headroom)
            for p, d in noise
        ] or [self.capacity_model.load_instances(capacity, prefill_in, decode_in)]
        # Bursts within a bin wait in the queue within the requests' first-token slack.
        slack_bins = observation.mean_ttft_s / config.bin_s
        limits = view.limits(role)
        # Online correction: while the window's requests met the target and nothing queued will
        # miss its deadline, the model's load is evidently servable, so burst headroom is spent
        # only once the SLOs say it is needed. Misses while fewer instances served than the model
        # itself asked for are the shortage's, not the model's: they raise no headroom.
        calm_headroom = config.headroom if config.calm_headroom is None else config.calm_headroom
        load_forecast = self.capacity_model.load_instances(
            capacity,
            prefill.ahead(horizon_s) if uses_prefill else 0.0,
            decode.ahead(horizon_s) if uses_decode else 0.0,
        )
        serving = sum(1 for i in view.instances if i.role == role and i.state == "active")
        if serving < _count(load_forecast, calm_headroom, target, limits):
            self._last_short_s[role] = now
        short_s = self._last_short_s.get(role)
        calm = (
            observation.attainment is not None and observation.attainment >= target and backlog == 0
        ) or (short_s is not None and now - short_s < config.window_s)
        headroom = calm_headroom if calm else config.headroom

        return PoolPlan(
            role=role,
            prefill_tokens_s=prefill_s,
            decode_tokens_s=decode_s,
            backlog_tokens=backlog,
            capacity=capacity,
            load_instances=load,
            headroom=headroom,
            target_attainment=target,
            num_needed=_count(load, headroom, target, limits),
            num_needed_in=_fewest(loads_in, config.target_attainment, limits, slack_bins),
            num_needed_now=_count(load_now, headroom, target, limits),
            num_planned=num_planned,
        )

    def _cooling(self, role: Role, now: float) -> bool:
        """Whether `role` grew too recently to shrink."""
        last = self._last_grow_s.get(role)
        return last is not None and now - last < self.config.cooldown_s

    @staticmethod
    def _suffix(observation: Observation, horizon_s: float) -> str:
        p, d = observation.prefill_tokens, observation.decode_tokens
        attained = "n/a" if observation.attainment is None else f"{observation.attainment:.3f}"
        return (
            f"forecast {horizon_s:.1f} s ahead: prefill now {p.level:.0f} tok/s slope "
            f"{p.slope:+.1f}/s, decode now {d.level:.0f} tok/s slope {d.slope:+.1f}/s; "
            f"observed attainment {attained} over {observation.num_finished} finished"
        )


def _count(load: float, headroom: float, target_attainment: float, limits: PoolLimits) -> int:
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


def _fewest(
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


class NoRoleSwitchScaler(HyperFlexisScaler):
    """The same sizing without role switches: an ablation of the cheapest action."""

    name = "no-role-switch"

    def __init__(self, context: ScalerContext, config: Any = None) -> None:
        base = config or HyperFlexisScalerConfig()
        super().__init__(context, replace(base, role_switch=False))
