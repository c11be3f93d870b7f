"""make_cost_model and the package's boundaries (no torch, no clock)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hyperflexis.perf
from hyperflexis.perf import (
    DEFAULT_FIXED_COEFFICIENTS,
    AnalyticCostModel,
    ProfiledCostModel,
    ProfileSample,
    StepFeatures,
    cost_model_kinds,
    fit,
    make_cost_model,
    write_profile,
)


def test_kinds() -> None:
    assert cost_model_kinds() == ["analytic", "fixed", "profiled"]


def test_analytic_by_names_with_tp_override() -> None:
    model = make_cost_model("analytic", hardware="h100", model="llama-3.1-70b", tensor_parallel=8)
    assert isinstance(model, AnalyticCostModel)
    assert model.model.tensor_parallel == 8 and model.hardware.name == "h100-sxm"


def test_fixed_defaults_and_custom() -> None:
    default = make_cost_model("fixed")
    assert isinstance(default, ProfiledCostModel)
    assert default.coefficients == DEFAULT_FIXED_COEFFICIENTS
    custom = make_cost_model("fixed", coefficients=[0.01, 0.0, 0.0, 0.001, 0.0])
    assert custom.predict(StepFeatures.of(decodes=[5, 5])) == pytest.approx(0.012)


def test_profiled_from_file(tmp_path: Path) -> None:
    samples = [ProfileSample([(n, 0)], [], 0.001 + 1e-5 * n) for n in (16, 64, 256, 1024)]
    fitted, _ = fit(samples)
    path = tmp_path / "p.json"
    write_profile(path, samples, fitted, {"model": "m", "device": "cpu", "dtype": "float32"})
    assert make_cost_model("profiled", path=path) == fitted


def test_unknown_kind_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="known: analytic, fixed, profiled"):
        make_cost_model("magic")
    with pytest.raises(ValueError, match=r"'analytic'.*hardware"):
        make_cost_model("analytic", model="llama-3.1-8b")
    with pytest.raises(ValueError, match="'fixed'"):
        make_cost_model("fixed", path="x.json")
    with pytest.raises(ValueError, match="unknown hardware"):
        make_cost_model("analytic", hardware="tpu", model="llama-3.1-8b")


ALLOWED_IMPORTS = {
    "__future__",
    "collections",
    "dataclasses",
    "inspect",
    "json",
    "math",
    "numpy",
    "os",
    "pathlib",
    "typing",
    "hyperflexis",
}


def test_perf_imports_no_torch_and_reads_no_clock() -> None:
    package = Path(hyperflexis.perf.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(roots) <= ALLOWED_IMPORTS, f"{source.name} imports {roots}"
