"""The cost-aware scaler (DESIGN.md §6): the fewest instances per pool whose predicted attainment
stays above the target one start-up ahead, reached by the cheapest actions.

Every control interval each pool is sized (`sizing.size_pool`: demand, capacity, the counts of
its `PoolPlan`), then the actions are chosen, cheapest first:

1. Role switch. A pool below its growth count (`num_to_grow_to`) takes instances from the other
   P/D pool when that one has more than its own growth count (no weight reload; the donor is
   judged as its own growth would judge it, so a switch is not followed by a scale-out of the
   donor).
2. Scale in. A pool scales in only to a count whose predicted attainment still reaches the full
   target (the promise, not the budget's window target: shrinking to the lower target's count
   put the pool on the boundary where the next burst scaled it out again) for the demand now
   and its noise (`num_to_keep`), only after that held for a whole scale-in window, and never
   below the count for the planned demand (`num_scale_in_floor`: the hysteresis on a fall). A
   lower target so keeps less spare for the noise.
3. Scale out. What a pool still lacks of its growth count starts new (weights from a live peer
   when there is one).

Hysteresis against flapping: a pool that grew (scale-out or a switch into it) does not shrink
(scale-in or a switch out of it) until the grown instance has served for a cooldown
(`cooldown.Cooldown`: counted from when it serves, not from the decision, so a slow start does
not eat it). Growth is never held back: starting instances already count towards the pool, so
it cannot repeat itself, and missing SLOs costs more than an instance.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from hyperflexis.cluster.links import LinkTable
from hyperflexis.cluster.scaler.actions import least_loaded, link_plan
from hyperflexis.cluster.scaler.base import Scaler, ScalerContext
from hyperflexis.cluster.scaler.budget import ErrorBudget
from hyperflexis.cluster.scaler.capacity import CapacityModel
from hyperflexis.cluster.scaler.config import HyperFlexisScalerConfig
from hyperflexis.cluster.scaler.cooldown import Cooldown
from hyperflexis.cluster.scaler.decision import ClusterView, ScalingDecision
from hyperflexis.cluster.scaler.observe import FinishedRequest, Observation
from hyperflexis.cluster.scaler.sizing import Outlook, PoolPlan, PoolState, size_pool
from hyperflexis.cluster.scaler.tracker import flipped
from hyperflexis.scheduler.config import Role


@dataclass(slots=True)
class _Actions:
    """One interval's choice of actions, as it is built."""

    now: float
    view: ClusterView
    plans: dict[Role, PoolPlan]
    links: LinkTable  # the planned links, changed by each decision in turn
    taken: set[str]  # instance ids in use (the view's and pending ones), for new ids
    num_short: dict[Role, int]  # instances each pool still lacks of its growth count
    suffix: str  # the interval's arithmetic, appended to every reason
    decisions: list[ScalingDecision] = field(default_factory=list)
    acted: set[Role] = field(default_factory=set)  # pools an action changed this interval


class HyperFlexisScaler(Scaler):
    name = "hyperflexis"
    config_type = HyperFlexisScalerConfig

    def __init__(
        self, context: ScalerContext, config: HyperFlexisScalerConfig | None = None
    ) -> None:
        self.config = config or HyperFlexisScalerConfig()
        super().__init__(context, config)
        self.capacity_model = CapacityModel(
            context.cost_model, context.scheduler_config, context.instance_kv_tokens
        )
        self.cooldown = Cooldown(self.config.cooldown_s)
        self._last_short_s: dict[Role, float] = {}  # last time fewer served than the model needs
        # Per pool, (time, num_to_keep) over the last scale-in window.
        self._to_keep: dict[Role, deque[tuple[float, int]]] = {}
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
        self.cooldown.sync(now, view)
        observation = self.observer.observe(now)
        self.last_observation = observation
        outlook = self._outlook(now, view)
        members = self.tracker.planned_members(view)
        plans = {
            role: self._plan(role, len(members.get(role, [])), observation, view, outlook)
            for role in sorted(view.pools)
        }
        self.last_plans = plans
        self._remember_to_keep(now, plans)
        if observation.covered_s < config.min_observed_s:
            return []
        attained, finished = self.budget.counts(now)
        actions = _Actions(
            now=now,
            view=view,
            plans=plans,
            links=link_plan(view, members),
            taken={i.instance_id for i in view.instances} | self.tracker.pending_ids(),
            num_short={
                role: max(plan.num_to_grow_to - plan.num_planned, 0) for role, plan in plans.items()
            },
            suffix=f"{_suffix(observation, outlook.horizon_s)}; error budget: {attained} of "
            f"{finished} attained over {config.budget_horizon_s:.0f} s",
        )
        if config.role_switch and view.is_disaggregated:
            self._switch_roles(actions)
        self._scale_in(actions)
        self._scale_out(actions)
        self.cooldown.record(now, actions.decisions)
        return actions.decisions

    def _outlook(self, now: float, view: ClusterView) -> Outlook:
        config = self.config
        startup = self.actions.startup.plan(view.instances)
        # An instance started now serves after its start-up and cannot be stopped before the
        # cooldown and a whole scale-in window have passed: late work cleared within that life
        # costs no more instance-seconds than clearing it faster, which needs more instances.
        return Outlook(
            now_s=now,
            horizon_s=startup.startup_s + config.control_interval_s,
            clear_s=startup.startup_s + max(config.cooldown_s, config.scale_in_window_s),
            target_attainment=self.budget.target(
                now, config.target_attainment, config.budget_floor
            ),
        )

    def _plan(
        self,
        role: Role,
        num_planned: int,
        observation: Observation,
        view: ClusterView,
        outlook: Outlook,
    ) -> PoolPlan:
        pool = PoolState(
            role=role,
            limits=view.limits(role),
            num_planned=num_planned,
            num_serving=sum(1 for i in view.instances if i.role == role and i.state == "active"),
            last_short_s=self._last_short_s.get(role),
        )
        plan = size_pool(pool, observation, self.capacity_model, self.config, outlook)
        if plan.is_short:
            self._last_short_s[role] = outlook.now_s
        return plan

    def _remember_to_keep(self, now: float, plans: dict[Role, PoolPlan]) -> None:
        for role, plan in plans.items():
            history = self._to_keep.setdefault(role, deque())
            history.append((now, plan.num_to_keep))
            while history and history[0][0] < now - self.config.scale_in_window_s:
                history.popleft()

    def _switch_roles(self, actions: _Actions) -> None:
        """Step 1: short P/D pools take the other pool's surplus over its own growth count."""
        plans, num_short, now = actions.plans, actions.num_short, actions.now
        for receiver in ("prefill", "decode"):
            donor = flipped(receiver)
            if receiver not in plans or donor not in plans or num_short[receiver] == 0:
                continue
            if self._cooling(donor, now):
                continue
            num_surplus = plans[donor].num_planned - plans[donor].num_to_grow_to
            candidates = least_loaded(actions.view, donor, self.tracker.is_free)
            for instance in candidates[: max(min(num_short[receiver], num_surplus), 0)]:
                reason = (
                    f"role switch {donor}->{receiver}: {plans[receiver].describe()}; "
                    f"{plans[donor].describe()}; {actions.suffix}"
                )
                actions.decisions.append(
                    self.actions.role_switch(now, instance, actions.links, reason)
                )
                num_short[receiver] -= 1
                actions.acted.update((receiver, donor))

    def _scale_in(self, actions: _Actions) -> None:
        """Step 2: pools with more than they kept needing over a scale-in window shrink."""
        config, now = self.config, actions.now
        assert self._first_decide_s is not None  # set by `_decide`
        for role, plan in actions.plans.items():
            if role in actions.acted or actions.num_short[role] > 0 or self._cooling(role, now):
                continue
            if now - self._first_decide_s < max(config.scale_in_window_s, config.window_s):
                # Not yet a whole window of evidence that demand stayed low, nor a whole
                # demand window: a ramp's slope is not yet significant in fewer bins.
                continue
            # Never below the count for the planned demand (hysteresis on a fall), which is at
            # least what growth wants now, so the next interval cannot undo it.
            num_keep = max(plan.num_scale_in_floor, *(n for _, n in self._to_keep[role]))
            num_surplus = plan.num_planned - num_keep
            if num_surplus <= 0:
                continue
            for instance in least_loaded(actions.view, role, self.tracker.is_free)[:num_surplus]:
                reason = (
                    f"scale in {plan.describe()}; needed at most {num_keep} over the last "
                    f"{config.scale_in_window_s:.0f} s; {actions.suffix}"
                )
                actions.decisions.append(
                    self.actions.scale_in(now, instance, actions.links, reason)
                )
                actions.acted.add(role)

    def _scale_out(self, actions: _Actions) -> None:
        """Step 3: what each pool still lacks of its growth count starts new."""
        for role, plan in actions.plans.items():
            for _ in range(actions.num_short[role]):
                reason = f"scale out {plan.describe()}; {actions.suffix}"
                actions.decisions.append(
                    self.actions.scale_out(
                        actions.now, actions.view, role, actions.links, actions.taken, reason
                    )
                )
                actions.acted.add(role)

    def _cooling(self, role: Role, now: float) -> bool:
        """Whether `role` grew too recently to shrink (its new instance is not serving yet, or
        has served less than the cooldown)."""
        return self.cooldown.is_cooling(role, now)


def _suffix(observation: Observation, horizon_s: float) -> str:
    p, d = observation.prefill_tokens, observation.decode_tokens
    attained = "n/a" if observation.attainment is None else f"{observation.attainment:.3f}"
    return (
        f"forecast {horizon_s:.1f} s ahead: prefill now {p.level:.0f} tok/s slope "
        f"{p.slope:+.1f}/s, decode now {d.level:.0f} tok/s slope {d.slope:+.1f}/s; "
        f"observed attainment {attained} over {observation.num_finished} finished"
    )


class NoRoleSwitchScaler(HyperFlexisScaler):
    """The same sizing without role switches: an ablation of the cheapest action."""

    name = "no-role-switch"

    def __init__(
        self, context: ScalerContext, config: HyperFlexisScalerConfig | None = None
    ) -> None:
        base = config or HyperFlexisScalerConfig()
        super().__init__(context, replace(base, role_switch=False))
