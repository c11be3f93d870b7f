"""The step latency model the server's scheduler policy and dispatcher need: a cached profile of
this model on this device, made once with `hyperflexis profile --quick` when missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hyperflexis.engine.step_profiler import default_profile_path, is_current_profile
from hyperflexis.perf.base import StepCostModel, StepFeatures, max_prefill_tokens
from hyperflexis.perf.chunks import refine_chunk
from hyperflexis.perf.registry import make_cost_model

PROFILE_TIMEOUT_S = 600.0


def load_or_profile(
    model_path: Path,
    device: str,
    dtype: str,
    kv_cache_bytes: int | None = None,
    path: Path | None = None,
) -> StepCostModel:
    """The profiled model at `path` (default: the cache). A missing or stale cached profile is
    made with the quick grid in a child process, so the server keeps no profiling memory."""
    if path is not None:
        if not path.is_file():
            raise ValueError(f"invalid '--profile': {path} does not exist")
        return make_cost_model("profiled", path=path)
    target = default_profile_path(model_path, device, dtype)
    if not is_current_profile(target):
        _profile(model_path, device, dtype, kv_cache_bytes, target)
    return make_cost_model("profiled", path=target)


def _profile(
    model_path: Path, device: str, dtype: str, kv_cache_bytes: int | None, out: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "hyperflexis",
        "profile",
        "--quick",
        "--model",
        str(model_path),
        "--device",
        device,
        "--dtype",
        dtype,
        "--out",
        str(out),
    ]
    if kv_cache_bytes is not None:
        command += ["--kv-cache-bytes", str(kv_cache_bytes)]
    print(f"no current step profile at {out}; profiling once (quick grid)...", file=sys.stderr)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=PROFILE_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"profiling failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


class SharedCorrection:
    """The dispatcher's latency model: the profile scaled by the factor the instances measure
    (their online corrections' mean, refreshed from their reports), so the dispatcher predicts
    what the instances' own schedulers predict."""

    __slots__ = ("factor", "model")

    def __init__(self, model: StepCostModel) -> None:
        self.model = model  # the profiled model every instance starts from
        self.factor = 1.0  # measured/predicted step time, mean over the live instances

    def predict(self, features: StepFeatures) -> float:
        return self.model.predict(features) * self.factor

    def max_prefill_tokens(
        self, features_base: StepFeatures, ctx_before: int, budget_s: float, max_tokens: int
    ) -> int:
        estimate = max_prefill_tokens(
            self.model, features_base, ctx_before, budget_s / self.factor, max_tokens
        )
        return refine_chunk(self, features_base, ctx_before, budget_s, max_tokens, estimate)
