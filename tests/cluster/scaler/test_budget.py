"""The SLO error budget: the planned window target from the run's misses, and the scaler using it
(manual clock)."""

from __future__ import annotations

import itertools

import pytest

from hyperflexis.cluster.scaler import HyperFlexisScaler, HyperFlexisScalerConfig
from hyperflexis.cluster.scaler.budget import ErrorBudget, window_target
from tests.cluster.scaler.helpers import STANDARD, Finished, MiniCluster, Traffic, scaler
from tests.cluster.scaler.test_scenarios import _feed, _noisy_rate


def test_window_target_goes_from_the_floor_to_the_target_as_the_budget_is_spent() -> None:
    # 1000 finished at 0.99 allow 10 misses: none spent plans at the floor, 5 half way, 10 or
    # more at the target; never outside [floor, target].
    assert window_target(1000, 1000, 0.99, 0.9) == pytest.approx(0.9)
    assert window_target(995, 1000, 0.99, 0.9) == pytest.approx(0.945)
    assert window_target(990, 1000, 0.99, 0.9) == pytest.approx(0.99)
    assert window_target(900, 1000, 0.99, 0.9) == pytest.approx(0.99)
    # No evidence, no budget (target 1), or a floor above the target: the target.
    assert window_target(0, 0, 0.99, 0.9) == 0.99
    assert window_target(1000, 1000, 1.0, 0.9) == 1.0
    assert window_target(1000, 1000, 0.95, 0.99) == 0.95


def test_window_target_is_monotone_in_the_misses() -> None:
    targets = [window_target(2000 - m, 2000, 0.99, 0.9) for m in range(0, 30)]
    assert all(a <= b for a, b in itertools.pairwise(targets))
    assert targets[0] == pytest.approx(0.9) and targets[-1] == pytest.approx(0.99)


def test_error_budget_counts_finishes_within_its_horizon() -> None:
    budget = ErrorBudget(horizon_s=100.0)
    for k in range(10):
        budget.record(float(k), attained=k != 0)
    assert budget.counts(50.0) == (9, 10)
    assert budget.counts(100.5) == (9, 9)  # the miss at 0 s has left the horizon
    assert budget.target(100.5, 0.99, 0.9) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        ErrorBudget(0.0)


def test_scale_in_keeps_the_promise_whatever_the_budget() -> None:
    # About 1.98 instances of load (+/-10% every 5 s) from 4 instances for 5 minutes, every
    # request on time: the budget lowers the window's target (scale-out) to its floor, but a
    # scale-in still keeps what the promise needs for the window's noise (3 here): shrinking to
    # the floor's count (2) would sit on the boundary where the next burst scales out again.
    for floor in (0.9, 0.85, 0.99):  # 0.99: no budget (the floor is the target)
        s = scaler(config=HyperFlexisScalerConfig(budget_floor=floor))
        assert isinstance(s, HyperFlexisScaler)
        cluster = MiniCluster.of({"mixed": 4}, mixed=(1, 8))
        _feed(s, cluster, Traffic(s), range(31), _noisy_rate(58.0, 0))
        assert [d.kind for d in cluster.log] == ["scale_in"], floor
        assert s.last_plans["mixed"].target_attainment == pytest.approx(floor)
        assert cluster.count("mixed") == 3, floor


def test_once_misses_spend_the_budget_the_pool_returns_to_the_full_target() -> None:
    # About 2.1 instances of load on 2 instances, every request on time: planned at the floor
    # (2.1 x 0.85 < 2) the pool stays at 2 for 5 minutes (deciding from a full window on),
    # where 0.99 starts a third. Then misses: a few leave budget to spare and nothing changes;
    # enough to spend it plan the window at the target again, and the pool scales out to 3.
    # The misses are older than the demand window when the scaler next decides, so its burst
    # headroom (which answers the window's misses) stays off: the budget alone asks for it.
    outcome = {}
    for num_missed in (20, 400):
        s = scaler()
        assert isinstance(s, HyperFlexisScaler)
        cluster = MiniCluster.of({"mixed": 2}, mixed=(1, 8))
        traffic = Traffic(s)
        # The first decision on a full window.
        _feed(s, cluster, traffic, range(6, 37), _noisy_rate(62.0, 0))
        plan = s.last_plans["mixed"]
        assert not cluster.log and plan.target_attainment == pytest.approx(s.config.budget_floor)
        for _ in range(num_missed):
            s.observe_finish(360.0, Finished(STANDARD.class_name, 200, attained=False))
        attained, finished = s.budget.counts(360.0)
        # 80 s on: no misses in the window.
        _feed(s, cluster, traffic, range(44, 45), _noisy_rate(62.0, 0))
        plan = s.last_plans["mixed"]
        assert plan.headroom == s.config.calm_headroom
        spent = finished - attained >= (1 - s.config.target_attainment) * finished
        outcome[num_missed] = (spent, plan.target_attainment, cluster.count("mixed"))
    assert outcome[20][0] is False and outcome[20][1] < 0.99 and outcome[20][2] == 2
    assert outcome[400] == (True, pytest.approx(0.99), 3)
    assert cluster.log[-1].kind == "scale_out" and "at target 0.990" in cluster.log[-1].reason


def test_without_the_budget_the_same_load_starts_a_third_instance() -> None:
    # The control of the test above: planned at 0.99 every window, 2.1 instances need 3.
    s = scaler(config=HyperFlexisScalerConfig(budget_floor=0.99))
    assert isinstance(s, HyperFlexisScaler)
    cluster = MiniCluster.of({"mixed": 2}, mixed=(1, 8))
    _feed(s, cluster, Traffic(s), range(6, 37), _noisy_rate(62.0, 0))
    assert [d.kind for d in cluster.log] == ["scale_out"] and cluster.count("mixed") == 3
