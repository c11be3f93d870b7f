"""What a live run measured for its twin: the sampler keeps every instance's steps (one that
stops or restarts mid-run included), and the transitions' times come from the server's events."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from hyperflexis.bench.fidelity import fit_window
from hyperflexis.bench.live_steps import StepSampler, transition_times
from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.online import OnlineCorrection
from hyperflexis.perf.profiled import ProfiledCostModel

TRUTH = ProfiledCostModel((4e-3, 3e-5, 0.0, 6e-4, 2e-7))
PROFILE = ProfiledCostModel((1e-3, 1e-4, 0.0, 5e-3, 0.0))


def _steps(model: OnlineCorrection, count: int, rng: random.Random) -> None:
    for _ in range(count):
        prefill = [(rng.randint(16, 256), 0)] if rng.random() < 0.3 else []
        decodes = [rng.randint(50, 400) for _ in range(rng.randint(0 if prefill else 1, 12))]
        features = StepFeatures.of(prefill, decodes)
        model.observe(features, TRUTH.predict(features) * math.exp(rng.gauss(0.0, 0.05)))


def _row(instance_id: str, model: OnlineCorrection, alive: bool = True) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "alive": alive,
        "num_blocks": 100,
        "correction_factor": model.factor,
        "step_fit_moments": list(model.fit_moments),
    }


def test_the_sampler_keeps_a_stopped_and_a_restarted_instance_steps() -> None:
    rng = random.Random(5)
    sampler = StepSampler("http://127.0.0.1:9")  # never polled: readings given by hand
    a, b = OnlineCorrection(PROFILE), OnlineCorrection(PROFILE)
    _steps(a, 50, rng)
    sampler.first = [_row("a", a)]  # a ran before the window; b starts inside it
    _steps(a, 400, rng)
    _steps(b, 400, rng)
    sampler.add_reading([_row("a", a), _row("b", b)])
    # b stops (absent from later readings); a restarts: its moments begin again at zero.
    counted_before_restart = a.fit_moments[-1]
    a = OnlineCorrection(PROFILE)
    _steps(a, 300, rng)
    sampler.add_reading([_row("a", a), _row("gone", b, alive=False)])
    rows = sampler.rows()
    assert sorted(str(r["instance_id"]) for r in rows) == ["a", "a#1", "b"]
    total = sum(float(r["step_fit_moments"][-1]) for r in rows)
    assert total == counted_before_restart + 400 + 300  # every step in the window, a's 50 not
    model, cv = fit_window(sampler.first, rows)
    probe = StepFeatures.of([(128, 0)], [200] * 6)
    assert model.predict(probe) == pytest.approx(TRUTH.predict(probe), rel=0.03)
    assert cv == pytest.approx(0.05, rel=0.3)
    assert 0.5 <= sampler.mean() < 1.0  # the instances run faster than the profile says


def test_a_sampler_without_readings_plans_as_profiled() -> None:
    assert StepSampler("http://127.0.0.1:9").mean() == 1.0


def test_transition_times_pair_each_start_and_each_switch() -> None:
    events = [
        {"time_s": 1.0, "instance_id": "prefill-0", "event": "ready"},  # no scale-out: ignored
        {"time_s": 10.0, "instance_id": "decode-1", "event": "scale_out"},
        {"time_s": 20.0, "instance_id": "prefill-1", "event": "drain"},
        {"time_s": 22.5, "instance_id": "prefill-1", "event": "flip"},
        {"time_s": 22.0, "instance_id": "decode-1", "event": "ready"},
        {"time_s": 23.25, "instance_id": "prefill-1", "event": "flipped"},
        {"time_s": 30.0, "instance_id": "mixed-2", "event": "scale_out"},  # never ready
    ]
    assert transition_times(events) == {"start_s": [12.0], "switch_s": [0.75]}
    assert transition_times([]) == {"start_s": [], "switch_s": []}
