"""The profiled model: fitting (non-negative, relative error), the profile file, and speed."""

from __future__ import annotations

import json
import random
import timeit
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hyperflexis.perf.analytic import AnalyticCostModel
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.perf.nnls import nnls
from hyperflexis.perf.profiled import (
    ProfiledCostModel,
    ProfileSample,
    fit,
    load_profile,
    read_profile,
    write_profile,
)
from hyperflexis.perf.specs import hardware_spec, model_spec

TRUE = ProfiledCostModel((5e-3, 3e-5, 1e-9, 2e-4, 5e-8))
META = {"model": "llama-3.1-8b", "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16"}


def shapes(
    rng: random.Random, num: int, max_new: int, max_ctx: int, max_decodes: int
) -> list[tuple[list[tuple[int, int]], list[int]]]:
    """A profiling grid's worth of random batches: prefill-only, decode-only and mixed."""
    out: list[tuple[list[tuple[int, int]], list[int]]] = []
    for i in range(num):
        kind = i % 3
        prefills = [] if kind == 1 else [(rng.randint(1, max_new), rng.randint(0, max_ctx))]
        decodes = (
            []
            if kind == 0
            else [rng.randint(1, max_ctx) for _ in range(rng.randint(1, max_decodes))]
        )
        out.append((prefills, decodes))
    return out


def sampled(
    model: StepCostModel, batch_shapes: Any, rng: random.Random, noise: float
) -> list[ProfileSample]:
    return [
        ProfileSample(p, d, model.predict(StepFeatures.of(p, d)) * (1 + rng.gauss(0, noise)))
        for p, d in batch_shapes
    ]


def test_fit_recovers_a_known_linear_model_under_5pct_noise() -> None:
    rng = random.Random(0)
    samples = sampled(TRUE, shapes(rng, 300, 2048, 8192, 128), rng, noise=0.05)
    model, error = fit(samples)
    held_out = sampled(TRUE, shapes(rng, 200, 2048, 8192, 128), rng, noise=0.0)
    held_out_error = np.median([abs(model.predict(s.features) / s.step_s - 1) for s in held_out])
    print(f"\nlinear + 5% noise: fit median rel error {error:.3f}, held-out {held_out_error:.3f}")
    print(f"true {TRUE.coefficients}\nfit  {model.coefficients}")
    assert error < 0.15
    assert held_out_error < 0.03  # the noise averages out: the fit is close to the truth
    for fitted, true in zip(model.coefficients, TRUE.coefficients, strict=True):
        assert fitted == pytest.approx(true, rel=0.25)


def test_fit_to_a_roofline_stays_close() -> None:
    rng = random.Random(1)
    roofline = AnalyticCostModel(hardware_spec("h100"), model_spec("llama-3.1-8b"))
    samples = sampled(roofline, shapes(rng, 300, 512, 2048, 32), rng, noise=0.0)
    model, error = fit(samples)
    print(f"\nlinear fit to the H100/8B roofline, small shapes: median rel error {error:.3f}")
    assert error < 0.15
    assert all(c >= 0 for c in model.coefficients)


def test_fit_weights_rows_by_relative_error() -> None:
    # Tiny decode steps and huge prefills: an unweighted fit would sacrifice the small steps.
    samples = [ProfileSample([], [100] * b, 0.004 + 1e-5 * b) for b in (1, 2, 4, 8)]
    samples += [ProfileSample([(n, 0)], [], 0.004 + 4e-5 * n) for n in (4096, 8192, 16384)]
    model, error = fit(samples)
    assert error < 0.01
    assert all(abs(model.predict(s.features) / s.step_s - 1) < 0.02 for s in samples)


def test_nnls_keeps_coefficients_non_negative() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, size=(40, 5)) * np.array([1, 1e3, 1e7, 10, 1e4])
    b = a @ np.array([1.0, -2e-3, 1e-7, 0.5, 0.0]) + rng.normal(0, 0.01, 40)
    x = nnls(a, b)
    assert np.all(x >= 0)
    scipy_optimize = pytest.importorskip("scipy.optimize")
    expected, _ = scipy_optimize.nnls(a, b)
    assert np.linalg.norm(a @ x - b) == pytest.approx(np.linalg.norm(a @ expected - b), rel=1e-6)


def test_profile_file_round_trip(tmp_path: Path) -> None:
    rng = random.Random(2)
    samples = sampled(TRUE, shapes(rng, 30, 512, 1024, 8), rng, noise=0.02)
    model, error = fit(samples)
    path = tmp_path / "cache" / "profile.json"
    write_profile(path, samples, model, {**META, "engine": "hyperflexis"})
    doc = json.loads(path.read_text())
    assert set(doc) == {*META, "engine", "samples", "coefficients", "median_rel_error"}
    assert doc["median_rel_error"] == pytest.approx(error)
    profile = read_profile(path)
    assert (profile.model, profile.device, profile.dtype) == tuple(META.values())
    assert profile.meta == {"engine": "hyperflexis"}
    assert profile.samples == samples
    assert load_profile(path) == model


def _valid_doc() -> dict[str, Any]:
    return {
        **META,
        "coefficients": [1e-3, 1e-5, 0.0, 1e-4, 1e-8],
        "median_rel_error": 0.05,
        "samples": [{"prefills": [[128, 0]], "decodes": [10, 20], "step_s": 0.01}],
    }


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("coefficients"), "'coefficients'"),
        (lambda d: d.update(coefficients=[1, 2, 3]), "'coefficients'"),
        (lambda d: d.update(coefficients=[1, 2, 3, -4, 5]), r"'coefficients\[3\]'"),
        (lambda d: d.update(coefficients=[1, 2, "x", 4, 5]), r"'coefficients\[2\]'"),
        (lambda d: d.pop("device"), "'device'"),
        (lambda d: d.update(median_rel_error="low"), "'median_rel_error'"),
        (lambda d: d.update(samples={}), "'samples'"),
        (lambda d: d["samples"][0].pop("step_s"), r"'samples\[0\]\.step_s'"),
        (lambda d: d["samples"][0].update(step_s=0.0), r"'samples\[0\]'.*'step_s'"),
        (lambda d: d["samples"][0].update(prefills=[[1, 2, 3]]), r"'samples\[0\]\.prefills'"),
        (lambda d: d["samples"][0].update(decodes=[-1]), r"'samples\[0\]\.decodes'"),
        (lambda d: d["samples"].append([1]), r"'samples\[1\]'"),
    ],
)
def test_malformed_profile_names_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    doc = _valid_doc()
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=field):
        load_profile(path)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(path)


def test_write_profile_needs_the_names(tmp_path: Path) -> None:
    samples = [ProfileSample([(8, 0)], [], 0.01)]
    with pytest.raises(ValueError, match="'device'"):
        write_profile(tmp_path / "p.json", samples, TRUE, {"model": "m", "dtype": "bf16"})


def test_invalid_models_and_samples() -> None:
    with pytest.raises(ValueError, match="5 numbers"):
        ProfiledCostModel((1.0, 2.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"coefficients\[4\]"):
        ProfiledCostModel((1.0, 0.0, 0.0, 0.0, float("nan")))
    with pytest.raises(ValueError, match="'step_s'"):
        ProfileSample([], [1], -0.1)
    with pytest.raises(ValueError, match="'prefills'"):
        ProfileSample([(0, 5)], [], 0.1)
    with pytest.raises(ValueError, match="empty"):
        fit([])


def test_predict_is_cheap() -> None:
    features = StepFeatures.of([(512, 1000)], [1024] * 32)
    models: dict[str, StepCostModel] = {
        "profiled": TRUE,
        "analytic": AnalyticCostModel(hardware_spec("h100"), model_spec("llama-3.1-70b")),
    }
    for name, model in models.items():
        num = 20_000
        seconds = min(timeit.repeat(lambda m=model: m.predict(features), number=num, repeat=3))
        print(f"\n{name} predict: {seconds / num * 1e9:.0f} ns/call")
        assert seconds / num < 20e-6  # generous: a loaded CI box, not a benchmark
