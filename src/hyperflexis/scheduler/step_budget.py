"""The step's time budget (DESIGN.md §4.1): the one home of the rule that bounds how long a step
may run next to the decodes in it. The instance scheduler plans with it, the dispatcher checks a
new decode against it, and the simulator's fast-forward stops where it would bind."""

from __future__ import annotations

from hyperflexis.scheduler.config import SchedulerConfig


def step_gap_bound_s(tightest_tpot_s: float, config: SchedulerConfig) -> float:
    """The longest step any decode in the batch may wait through: never more than
    `max_gap_factor` TPOTs of its tightest decode, nor more than `max_step_s`. Without it, slack
    that decodes banked by running ahead lets one step swallow the whole prefill queue and stall
    their streams while their mean TPOT still looks fine."""
    return min(config.max_gap_factor * tightest_tpot_s, config.max_step_s)


def mean_step_s(tightest_tpot_s: float, config: SchedulerConfig) -> float:
    """The mean step the decodes' cumulative deadlines allow back to back: one TPOT of the
    tightest decode less the planning margin (`tpot_margin`: deadlines are planned that much
    early), within `max_step_s`. Not the gap bound, which caps one step, not their mean. What the
    budgeted prefill rate and the scaler's decode capacity both plan with."""
    return min((1.0 - config.tpot_margin) * tightest_tpot_s, config.max_step_s)


def step_budget_s(
    earliest_deadline_s: float, tightest_tpot_s: float, now: float, config: SchedulerConfig
) -> float:
    """The step's time budget with decodes in the batch: until the soonest next-token deadline
    among them, within the gap bound."""
    return min(earliest_deadline_s - now, step_gap_bound_s(tightest_tpot_s, config))


def idle_step_budget_s(config: SchedulerConfig) -> float:
    """The step's time budget with no decode in the batch: a prefill instance's target step
    time, else the longest step the scheduler plans."""
    return config.target_step_s if config.role == "prefill" else config.max_step_s
