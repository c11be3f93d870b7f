"""Live against simulated: the comparison of two summaries, the step spread from two readings of
the instances' moments, the twin's noise and its scaled profile."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from hyperflexis.bench.fidelity import (
    ALL,
    StepSpread,
    Targets,
    compare_point,
    markdown_table,
    moments_by_instance,
    response_latency,
    scaled_profile,
    step_spread,
    twin_noise,
    verdict,
)
from hyperflexis.bench.metrics import RequestRecord
from hyperflexis.bench.recompute import recompute
from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.profiled import ProfiledCostModel, ProfileSample, read_profile, write_profile


def record(name: str, slo_class: str, ttft_s: float, tpot_s: float) -> RequestRecord:
    """A completed 11-token request with a 1 s TTFT and 0.1 s TPOT target."""
    return RequestRecord(
        request_id=name,
        slo_class=slo_class,
        priority=1,
        ttft_slo_s=1.0,
        tpot_slo_s=0.1,
        arrival_s=0.0,
        first_token_s=ttft_s,
        finish_s=ttft_s + 10 * tpot_s,
        num_prompt_tokens=8,
        num_output_tokens=11,
        status="completed",
    )


def summary(ttfts: dict[str, list[float]], tpot_s: float = 0.05) -> dict[str, Any]:
    records = [
        record(f"{c}-{i}", c, ttft, tpot_s)
        for c, values in ttfts.items()
        for i, ttft in enumerate(values)
    ]
    return recompute(records, 10.0, 20.0)


def test_a_point_sets_each_class_and_all_side_by_side() -> None:
    live = summary({"a": [0.2, 0.4, 0.6, 2.0], "b": [0.5, 0.5]})  # a: 3 of 4 attain
    sim = summary({"a": [0.22, 0.44, 0.66, 0.8], "b": [0.5, 0.5]}, tpot_s=0.055)  # all attain
    point = compare_point(8.0, live, sim)
    assert [row.slo_class for row in point.rows] == ["a", "b", ALL]
    a, b, every = point.rows
    assert a.attainment == (0.75, 1.0) and a.attainment_gap_points == pytest.approx(25.0)
    assert every.attainment_gap_points == pytest.approx(100 / 6)
    assert b.relative_errors()["TTFT p50"] == pytest.approx(0.0)
    assert b.relative_errors()["TPOT p90"] == pytest.approx(0.1)
    assert a.latencies_s["TTFT p50"] == pytest.approx((0.5, 0.55))
    assert a.relative_errors()["TTFT p50"] == pytest.approx(0.1)
    assert not point.below_knee  # live attains 5/6 < 90%


def test_the_latency_targets_count_only_below_the_knee() -> None:
    quiet_live = summary({"a": [0.2, 0.4]})
    quiet_sim = summary({"a": [0.21, 0.42]}, tpot_s=0.052)  # every figure within 5%
    past_live = summary({"a": [0.2, 3.0]})  # half attain: past the knee
    past_sim = summary({"a": [0.9, 3.0]}, tpot_s=0.09)  # far off, but past the knee
    points = [compare_point(8, quiet_live, quiet_sim), compare_point(32, past_live, past_sim)]
    result = verdict(points, Targets())
    assert result["rates_below_knee"] == [8]
    assert result["latency_met"] and result["latency_goal_met"]
    assert result["worst_latency_error"] == pytest.approx(0.05)
    assert result["share_of_latency_figures_within_target"] == 1.0
    assert result["attainment_met"] and result["worst_attainment_gap_points"] == 0.0


def test_the_verdict_names_the_worst_miss() -> None:
    live = summary({"a": [0.2, 0.4, 0.6], "b": [0.3, 0.3, 0.3]})
    sim = summary({"a": [0.2, 0.4, 1.6], "b": [0.3, 0.3, 0.36]})  # a loses one
    result = verdict([compare_point(16, live, sim)], Targets(attainment_points=3.0))
    assert not result["attainment_met"]
    assert result["worst_attainment_gap_points"] == pytest.approx(100 / 3)
    assert result["worst_attainment_gap_at"] == {"rate_rps": 16, "slo_class": "a"}
    assert not result["latency_met"]
    # a's TTFT p90: 0.56 s live (numpy's interpolation), 1.36 s simulated
    assert result["worst_latency_error_at"] == {
        "rate_rps": 16,
        "slo_class": "a",
        "figure": "TTFT p90",
    }
    assert result["worst_latency_error"] == pytest.approx(0.8 / 0.56)


def test_a_point_refuses_runs_of_other_requests() -> None:
    with pytest.raises(ValueError, match="requests"):
        compare_point(8, summary({"a": [0.2, 0.3]}), summary({"a": [0.2]}))
    with pytest.raises(ValueError, match="classes differ"):
        compare_point(8, summary({"a": [0.2]}), summary({"b": [0.2]}))


def test_the_table_has_a_row_per_rate_and_class_and_marks_the_knee() -> None:
    point = compare_point(8, summary({"a": [0.2, 3.0]}), summary({"a": [0.2, 3.0]}))
    table = markdown_table([point])
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, rule, class a, all
    assert lines[2].startswith("| 8 (past knee) | a | 2 | 50.0% / 50.0% (+0.0) |")
    assert "50.0 / 50.0 (+0%)" in lines[2]  # TPOT p50, ms


def moments_of(ratios: list[float]) -> list[float]:
    return [len(ratios), math.fsum(ratios), math.fsum(r * r for r in ratios)]


def rows(by_instance: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    return [
        {
            "instance_id": instance,
            "alive": True,
            "step_ratio_moments": {kind: moments_of(r) for kind, r in kinds.items()},
        }
        for instance, kinds in by_instance.items()
    ]


def test_the_spread_is_the_steps_between_two_readings_pooled_over_instances() -> None:
    early = {"prefill": [5.0, 7.0], "decode": [9.0]}  # before the window: left out
    window = {"i0": {"prefill": [1.0, 1.5], "decode": [2.0, 2.5, 3.0]}, "i1": {"decode": [2.0]}}
    before = moments_by_instance(rows({"i0": early}))
    after_steps = {
        "i0": {k: early.get(k, []) + v for k, v in window["i0"].items()},
        "i1": window["i1"],
    }
    after = moments_by_instance(rows(after_steps))
    decode = [2.0, 2.5, 3.0, 2.0]
    spread = step_spread(before, after, kind="decode")
    assert spread.num_steps == 4
    assert spread.mean == pytest.approx(statistics.fmean(decode))
    assert spread.cv == pytest.approx(statistics.pstdev(decode) / statistics.fmean(decode))
    pooled = step_spread(before, after)
    assert pooled.num_steps == 6 and pooled.mean == pytest.approx(12.0 / 6)
    assert step_spread(before, after, kind="prefill").mean == pytest.approx(1.25)


def test_a_restarted_instance_counts_its_steps_from_zero() -> None:
    before = moments_by_instance(rows({"i0": {"decode": [1.0] * 10}}))
    after = moments_by_instance(rows({"i0": {"decode": [2.0, 4.0]}}))  # a new process
    spread = step_spread(before, after)
    assert spread.num_steps == 2 and spread.mean == pytest.approx(3.0)
    with pytest.raises(ValueError, match="steps"):
        step_spread(after, after)  # no step in between


def test_the_twin_plans_with_the_factor_and_charges_each_kind_its_mean() -> None:
    pooled, prefill, decode = (
        StepSpread(10, 1.5, 0.4),
        StepSpread(4, 1.0, 0.2),
        StepSpread(6, 2.0, 0.3),
    )
    noise = twin_noise(1.25, pooled, prefill, decode)
    assert noise.cv == 0.2 and noise.decode_cv == 0.3
    assert noise.bias == pytest.approx(1.0 / 1.25 - 1) and noise.decode_bias == pytest.approx(0.6)
    flat = twin_noise(1.5, pooled)
    assert flat.cv == 0.4 and flat.bias == pytest.approx(0.0) and flat.decode_bias is None
    with pytest.raises(ValueError, match="plan factor"):
        twin_noise(0.0, pooled)


def test_a_scaled_profile_predicts_the_factor_times_the_original(tmp_path: Path) -> None:
    model = ProfiledCostModel((1e-3, 2e-5, 1e-9, 3e-4, 1e-7))
    samples = [ProfileSample([(64, 0)], [], 0.003), ProfileSample([], [100, 200], 0.002)]
    source = tmp_path / "profile.json"
    write_profile(source, samples, model, {"model": "m", "device": "cpu", "dtype": "float32"})
    scaled = read_profile(scaled_profile(source, 1.5, tmp_path / "scaled.json"))
    features = StepFeatures.of([(128, 32)], [300, 400])
    assert scaled.cost_model().predict(features) == pytest.approx(1.5 * model.predict(features))
    assert scaled.samples[0].step_s == pytest.approx(0.0045)
    assert scaled.meta["scaled_from"]["factor"] == 1.5
    with pytest.raises(ValueError, match="scale"):
        scaled_profile(source, math.inf, tmp_path / "bad.json")


def test_the_response_latency_is_the_median_ttft_gap_of_matched_requests() -> None:
    live = [{"request_id": f"r{i}", "ttft_s": 0.1 + 0.01 * i} for i in range(5)]
    live.append({"request_id": "lost", "ttft_s": None})  # no first token: left out
    sim = [{"request_id": f"r{i}", "ttft_s": 0.07} for i in range(5)]
    sim.append({"request_id": "lost", "ttft_s": 0.05})
    assert response_latency(live, sim) == pytest.approx(0.05)  # gaps 0.03..0.07
    assert response_latency(sim[:5], live[:5]) == 0.0  # a twin slower than live: no latency
    with pytest.raises(ValueError, match="first token"):
        response_latency(live[5:], sim)


def test_a_window_refits_the_model_the_live_steps_followed() -> None:
    import random

    from hyperflexis.bench.fidelity import fit_window
    from hyperflexis.perf.online import OnlineCorrection

    truth = ProfiledCostModel((4e-3, 3e-5, 0.0, 6e-4, 2e-7))
    profile = ProfiledCostModel((1e-3, 1e-4, 0.0, 5e-3, 0.0))  # what the instances plan with
    rng = random.Random(3)
    instances = {name: OnlineCorrection(profile) for name in ("i0", "i1")}

    def steps(count: int) -> None:
        for _ in range(count):
            prefill = [(rng.randint(16, 256), 0)] if rng.random() < 0.3 else []
            decodes = [rng.randint(50, 400) for _ in range(rng.randint(0 if prefill else 1, 12))]
            features = StepFeatures.of(prefill, decodes)
            noise = math.exp(rng.gauss(0.0, 0.1))
            instances[rng.choice(["i0", "i1"])].observe(features, truth.predict(features) * noise)

    def reading() -> list[dict[str, Any]]:
        return [
            {"instance_id": name, "alive": True, "step_fit_moments": list(c.fit_moments)}
            for name, c in instances.items()
        ]

    steps(50)  # before the window, off the truth: left out
    for c in instances.values():
        c.observe(StepFeatures.of(decodes=[10]), 1.0)
    before = reading()
    steps(3000)
    model, cv = fit_window(before, reading())
    probe = StepFeatures.of([(128, 0)], [200] * 6)
    assert model.predict(probe) == pytest.approx(truth.predict(probe), rel=0.03)
    assert model.coefficients[0] == pytest.approx(4e-3, rel=0.1)
    assert model.coefficients[3] == pytest.approx(6e-4, rel=0.1)
    assert cv == pytest.approx(0.1, rel=0.2)
    with pytest.raises(ValueError, match="too few"):
        fit_window(before, before)
