from __future__ import annotations

import math

import pytest

from hyperflexis.scheduler import Role, SchedulerConfig, step_gap_bound_s
from hyperflexis.scheduler.step_budget import idle_step_budget_s, mean_step_s, step_budget_s
from tests.scheduler.helpers import make

CONFIG = SchedulerConfig(max_gap_factor=1.5, max_step_s=0.5, target_step_s=0.2)


def test_gap_bound_is_the_gap_factor_times_the_tightest_tpot_within_the_longest_step() -> None:
    assert step_gap_bound_s(0.1, CONFIG) == pytest.approx(0.15)
    assert step_gap_bound_s(1.0, CONFIG) == 0.5  # max_step_s caps a loose TPOT
    assert step_gap_bound_s(math.inf, CONFIG) == 0.5


def test_mean_step_is_one_tpot_less_the_margin_within_the_longest_step() -> None:
    config = SchedulerConfig(tpot_margin=0.05, max_step_s=0.5)
    assert mean_step_s(0.04, config) == pytest.approx(0.038)
    assert mean_step_s(1.0, config) == 0.5
    assert mean_step_s(math.inf, config) == 0.5


def test_step_budget_runs_to_the_soonest_deadline_within_the_gap_bound() -> None:
    assert step_budget_s(10.08, 0.1, now=10.0, config=CONFIG) == pytest.approx(0.08)
    assert step_budget_s(12.0, 0.1, now=10.0, config=CONFIG) == pytest.approx(0.15)
    assert step_budget_s(9.9, 0.1, now=10.0, config=CONFIG) == pytest.approx(-0.1)  # overdue


@pytest.mark.parametrize(("role", "budget_s"), [("mixed", 0.5), ("decode", 0.5), ("prefill", 0.2)])
def test_a_step_without_decodes_gets_the_roles_step_time(role: Role, budget_s: float) -> None:
    config = SchedulerConfig(role=role, max_step_s=0.5, target_step_s=0.2)
    assert idle_step_budget_s(config) == budget_s


def test_fast_forward_hooks_say_when_each_policy_acts_on_a_decode_only_batch() -> None:
    fcfs = make("fcfs", max_num_batched_tokens=64)
    assert fcfs.max_decodes_per_step() == 64  # more decodes than its token budget: it drops one
    assert fcfs.max_decode_only_step_s(10, 0.01) == math.inf  # it never looks at time
    sarathi = make("sarathi", max_prefill_chunk=32)
    assert sarathi.max_decodes_per_step() == 32  # its chunk is its token budget
    hyperflexis = make("hyperflexis", max_num_batched_tokens=64, max_gap_factor=2.0)
    assert hyperflexis.max_decodes_per_step() == math.inf  # it preempts for time instead
    assert hyperflexis.max_decode_only_step_s(2, 0.1) == pytest.approx(0.2)  # the gap bound
    assert hyperflexis.max_decode_only_step_s(1, 0.1) == math.inf  # a lone decode always runs
