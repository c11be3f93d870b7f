"""`python -m hyperflexis.demo --quick`: serves the built-in model (built in a tmp cache), runs a
short multi-SLO benchmark against it, prints the per-class table and leaves no server behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperflexis import demo
from hyperflexis.perf.profiled import ProfiledCostModel, ProfileSample, write_profile


def _profile(path: Path) -> Path:
    """A plausible step profile of the tiny model on a CPU (1 ms a step, 0.1 ms a prompt token,
    1 ms a decode), so the server need not profile the freshly built model (~30 s)."""
    model = ProfiledCostModel((1e-3, 1e-4, 0.0, 1e-3, 0.0))
    samples = [ProfileSample([(64, 0)], [], 7.4e-3), ProfileSample([], [32, 32], 3e-3)]
    write_profile(path, samples, model, {"model": "tiny", "device": "cpu", "dtype": "float32"})
    return path


@pytest.mark.slow
def test_quick_demo_serves_benchmarks_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))
    assert demo.main(["--quick", "--profile", str(_profile(tmp_path / "p.json"))]) == 0
    out = capsys.readouterr().out
    assert "policy hyperflexis, dispatch hyperflexis" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in ("interactive", "standard", "batch", "all"):
        assert name in rows, out
    num_requests, _ = demo.QUICK_LOAD
    assert rows["all"][1] == str(num_requests)
    assert "server stopped" in out
    assert (tmp_path / "models").is_dir()  # the model was built in the tmp cache


def test_quick_workload_has_every_class() -> None:
    workload = demo.demo_workload(quick=True, seed=0)
    assert len(workload) == demo.QUICK_LOAD[0]
    assert {spec.slo_class for spec in workload} == set(demo.DEMO_CLASSES)
