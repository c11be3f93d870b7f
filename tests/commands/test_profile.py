"""`hyperflexis profile --quick`: times real steps, fits the latency model, writes the JSON the
`--profile` options read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hyperflexis.cli import main
from hyperflexis.perf import read_profile
from hyperflexis.scheduler import num_blocks_for


def test_quick_profile_writes_a_fitted_profile(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tmp.json"
    assert main(["profile", "--quick", "--model", str(tiny_llama_dir), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"model", "device", "dtype", "samples", "coefficients", "median_rel_error"} <= set(doc)
    assert doc["device"] == "cpu" and doc["dtype"] == "float32"
    assert doc["model"] == str(tiny_llama_dir)
    assert len(doc["coefficients"]) == 5 and all(c >= 0 for c in doc["coefficients"])
    assert math.isfinite(doc["median_rel_error"])
    samples = doc["samples"]
    assert len(samples) >= 5
    assert any(s["prefills"] and not s["decodes"] for s in samples)  # prefill only
    assert any(s["decodes"] and not s["prefills"] for s in samples)  # decode only
    assert any(s["decodes"] and s["prefills"] for s in samples)  # mixed
    assert all(s["step_s"] > 0 for s in samples)
    for sample in samples:  # every shape fits the 256-token context
        assert all(new + ctx <= 256 for new, ctx in sample["prefills"])
        assert all(ctx < 256 for ctx in sample["decodes"])
    read_profile(out)  # the perf package accepts it

    # The profile drives the SLO-aware policy end to end.
    argv = ["generate", "--prompt", "w5 w6", "--model", str(tiny_llama_dir), "--max-tokens", "3"]
    assert main([*argv, "--policy", "hyperflexis", "--profile", str(out)]) == 0
    assert capsys.readouterr().out.strip()


def test_default_output_goes_to_the_cache(
    tiny_llama_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hyperflexis.engine import step_profiler

    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))
    tiny = step_profiler.GridSpec(
        prefill_tokens=(8, 32),
        prefill_contexts=(0, 16),
        decode_batch_sizes=(1, 4),
        decode_contexts=(16,),
        mixed=((2, 16, 8, 0),),
        num_warmup=0,
        num_repeats=1,
    )
    monkeypatch.setattr(step_profiler, "QUICK_GRID", tiny)
    assert main(["profile", "--quick", "--model", str(tiny_llama_dir)]) == 0
    written = tmp_path / "profiles" / f"{tiny_llama_dir.name}-cpu-float32.json"
    assert f"wrote {written}" in capsys.readouterr().out
    assert len(read_profile(written).samples) == 7


def test_shapes_that_do_not_fit_are_dropped() -> None:
    from hyperflexis.engine.step_profiler import QUICK_GRID, grid_shapes

    shapes = grid_shapes(QUICK_GRID, max_model_len=128, num_kv_blocks=8, block_size=16)
    assert shapes
    for shape in shapes:
        lengths = shape.num_kv_tokens()
        assert max(lengths) <= 128
        assert sum(num_blocks_for(n, 16) for n in lengths) <= 8


class _ClockedRunner:
    """A runner whose steps take the given durations on its own clock."""

    num_kv_blocks = 64
    block_size = 16
    max_model_len = 256

    def __init__(self, durations: list[float]) -> None:
        self.durations = iter(durations)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def execute(self, output: object) -> dict[str, int]:
        self.now += next(self.durations)
        return {}


def test_a_shape_costs_its_fastest_run_so_a_busy_neighbour_does_not_stick() -> None:
    import random

    from hyperflexis.engine.step_profiler import BatchShape, time_shape

    # One warm-up, then five timed runs; a busy neighbour adds ~300 ms to three of them.
    runner = _ClockedRunner([0.5, 0.31, 0.01, 0.32, 0.012, 0.33])
    shape = BatchShape(prefills=((16, 0),), decodes=(32,))
    step_s = time_shape(runner, shape, 100, 1, 5, random.Random(0), runner.clock)
    assert step_s == pytest.approx(0.01)
    assert next(runner.durations, None) is None  # every run happened
