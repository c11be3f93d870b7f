"""The baseline tuner keeps the setting with the highest goodput@90, reading each sweep only up
to its first failing rate, on a scripted surface and on a small simulated case."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest

from hyperflexis.bench.metrics import goodput_at
from hyperflexis.bench.tuning import (
    BaselineSetting,
    Point,
    SearchSpace,
    TuneCase,
    distserve_budgets,
    load_tuned,
    save_tuned,
    tune,
)
from hyperflexis.core import SLOClasses
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import Deployment, SimSetup, simulate
from hyperflexis.workloads import build_workload, make_lengths, parse_slo_mix, poisson

RATES = tuple(float(r) for r in range(5, 60))


def _capacity(setting: BaselineSetting) -> float:
    """A separable surface: best at budget 1024, least-loaded, 128 seqs."""
    budget = {512: 5.0, 1024: 15.0, 2048: 10.0}[setting.max_num_batched_tokens]
    dispatch = {"round-robin": 0.0, "least-loaded": 8.0}[setting.dispatch]
    seqs = {128: 6.0, 256: 0.0}[setting.max_num_seqs]
    return 10.0 + budget + dispatch + seqs


def test_coordinate_descent_finds_the_best_setting_and_stops_each_sweep_at_its_first_miss() -> None:
    space = SearchSpace(budgets=(512, 1024, 2048), max_num_seqs=(128, 256))
    case = TuneCase("c", BaselineSetting("fcfs", 2048, "round-robin"), space, RATES)
    asked: list[Point] = []

    def evaluate(points: Sequence[Point]) -> list[float]:
        asked.extend(points)
        return [1.0 if rate <= _capacity(s) else 0.5 for _, s, rate in points]

    (result,) = tune([case], evaluate)
    grid = [
        BaselineSetting("fcfs", b, d, n)
        for b, d, n in itertools.product(space.budgets, space.dispatchers, space.max_num_seqs)
    ]
    best = max(grid, key=_capacity)
    assert result.best == best == BaselineSetting("fcfs", 1024, "least-loaded", 128)
    assert result.goodput == max(result.tried.values())
    for setting, points in result.sweeps.items():
        rates = [r for _, s, r in asked if s == setting]
        assert rates == [r for r, _ in points]  # each setting swept once
        failing = [r for r, a in points if a < 0.9]
        assert failing in ([], [rates[-1]])  # nothing asked past the first miss


def test_the_tuner_picks_the_best_of_settings_on_a_small_simulated_case() -> None:
    classes = SLOClasses()

    def workload(rate: float) -> list:  # type: ignore[type-arg]
        return build_workload(
            seed=1,
            slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", classes),
            arrival=poisson(rate),
            prompt_lens=make_lengths("lognormal", mean=1500, sigma=0.8, max_len=6000),
            output_lens=make_lengths("lognormal", mean=100, sigma=0.8, max_len=400),
            num_requests=120,
        )

    def attainment(setting: BaselineSetting, rate: float) -> float:
        config = SchedulerConfig(
            max_num_batched_tokens=setting.max_num_batched_tokens,
            max_num_seqs=setting.max_num_seqs,
        )
        setup = SimSetup(
            deployment=Deployment(num_mixed=1), policy=setting.policy, scheduler=config
        )
        return float(simulate(setup, classes, workload(rate))["attainment"])

    rates = (4.0, 8.0, 12.0, 16.0, 24.0, 32.0)
    space = SearchSpace(budgets=(256, 8192), dispatchers=("round-robin",), max_num_seqs=(2, 256))
    case = TuneCase("one", BaselineSetting("sarathi", 8192, "round-robin", 2), space, rates)
    (result,) = tune([case], lambda points: [attainment(s, r) for _, s, r in points])
    full = {
        setting: goodput_at([(r, attainment(setting, r)) for r in rates])
        for setting in result.tried
    }
    assert full == result.tried  # reading a sweep only to its first miss loses nothing
    assert len(set(full.values())) > 1  # the knobs matter on this case
    assert result.goodput == max(full.values()) and full[result.best] == result.goodput


def test_distserve_budgets_start_at_the_longest_prompt() -> None:
    assert distserve_budgets((512, 2048, 8192, 16384), 4000) == (4001, 8192, 16384)
    assert distserve_budgets((512,), 4000) == (4001,)


def test_tuned_settings_round_trip_per_trace_and_deployment(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    space = SearchSpace(budgets=(512,), dispatchers=("round-robin",), max_num_seqs=(64,))
    case = TuneCase("d", BaselineSetting("edf", 512, "round-robin", 64), space, (1.0,))
    (result,) = tune([case], lambda points: [1.0 for _ in points])
    save_tuned(path, "trace-a", {"num_requests": 10}, {"d": {"edf": result}})
    save_tuned(path, "trace-b", {}, {"d": {}})
    assert load_tuned(path, "trace-a", "d") == {"edf": result.best}
    assert load_tuned(path, "trace-b", "d") == {} == load_tuned(tmp_path / "none.json", "t", "d")
    with pytest.raises(ValueError, match="ascending"):
        dataclasses.replace(case, rates=(2.0, 1.0))
