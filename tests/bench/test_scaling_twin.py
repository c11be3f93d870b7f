"""The simulated twin of a live scaling run plans as the live schedulers did, charges what the
live steps took, and replays the measured transition times."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperflexis.bench.scaling_twin import TwinSetup, measured_setup, pooled_times, predict
from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.profiled import ProfiledCostModel, ProfileSample, read_profile, write_profile
from hyperflexis.sim.deployment import Deployment
from hyperflexis.workloads import build_workload, make_lengths, parse_slo_mix, poisson

PROFILE = ProfiledCostModel((2e-3, 2e-5, 0.0, 2e-4, 1e-7))
REFIT = ProfiledCostModel((5e-3, 3e-5, 0.0, 4e-4, 0.0))
PROBE = StepFeatures.of([(128, 0)], [200] * 4)


@pytest.fixture()
def twin(tmp_path: Path) -> TwinSetup:
    samples = [ProfileSample([(64, 0)], [], 0.003), ProfileSample([], [100, 200], 0.002)]
    path = tmp_path / "profile.json"
    write_profile(path, samples, PROFILE, {"model": "m", "device": "cpu", "dtype": "float32"})
    start = Deployment(num_prefill=2, num_decode=1)
    return TwinSetup(path, start, "hyperflexis", max_instances=2, control_interval_s=5.0)


def _row(refit: bool) -> dict[str, object]:
    return {
        "correction_factor": 1.8,
        "plan_factor": 1.5,
        "num_kv_blocks": 256,
        "refit": {"coefficients": list(REFIT.coefficients), "cv": 0.4} if refit else None,
        "start_s": [4.0],
        "switch_s": [0.5],
    }


def test_the_twin_plans_with_the_mean_correction_and_charges_the_refit(
    twin: TwinSetup, tmp_path: Path
) -> None:
    setup = measured_setup(twin, _row(refit=True), tmp_path)
    assert setup.profile_path is not None and setup.charge_profile_path is not None
    planned = read_profile(setup.profile_path).cost_model()
    assert planned.predict(PROBE) == pytest.approx(1.5 * PROFILE.predict(PROBE))
    charged = read_profile(setup.charge_profile_path).cost_model()
    assert charged.predict(PROBE) == pytest.approx(REFIT.predict(PROBE))
    assert (setup.step_noise_cv, setup.profile_error, setup.num_kv_blocks) == (0.4, 0.0, 256)


def test_without_a_refit_the_twin_charges_the_final_over_the_planning_factor(
    twin: TwinSetup, tmp_path: Path
) -> None:
    setup = measured_setup(twin, _row(refit=False), tmp_path)
    assert setup.charge_profile_path is None
    assert setup.profile_error == pytest.approx(1.8 / 1.5 - 1)


def test_transition_times_pool_over_runs_and_older_rows_read_their_events() -> None:
    older = {
        "events": [
            {"time_s": 0.0, "instance_id": "d1", "event": "scale_out"},
            {"time_s": 8.0, "instance_id": "d1", "event": "ready"},
        ]
    }
    assert pooled_times([_row(refit=True), older]) == {"start_s": 6.0, "role_switch_s": 0.5}
    assert pooled_times([{"events": []}]) == {"start_s": None, "role_switch_s": 1.0}


def test_predict_runs_the_three_twins(twin: TwinSetup) -> None:
    classes = SLOClasses()
    workload = build_workload(
        seed=0,
        slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", classes),
        arrival=poisson(4.0),
        prompt_lens=make_lengths("lognormal", mean=200, sigma=0.5, max_len=512),
        output_lens=make_lengths("lognormal", mean=20, sigma=0.5, max_len=64),
        num_requests=60,
    )
    times = pooled_times([_row(refit=True)])
    out = predict(twin, _row(refit=True), times, classes, workload)
    assert set(out) == {"correction_factor", "measured_times", "measured", "uniform", "raw"}
    assert out["measured_times"] == {"start_s": 4.0, "role_switch_s": 0.5}
    for name in ("measured", "uniform", "raw"):
        assert 0.0 <= out[name]["attainment"] <= 1.0
        assert out[name]["instance_seconds"] > 0
