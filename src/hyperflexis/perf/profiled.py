"""The profiled latency model: DESIGN.md §3's linear form, fitted to measured engine steps.

    t = c0 + c1*num_prefill_tokens + c2*prefill_attn_tokens2 + c3*num_decodes + c4*decode_ctx_tokens

`hyperflexis profile` measures steps over a grid of batch shapes, calls `fit` and saves the result
with `write_profile`; servers and the simulator read it back with `load_profile`. The file is JSON:

    {"model": str, "device": str, "dtype": str, ...,
     "coefficients": [c0, c1, c2, c3, c4], "median_rel_error": float,
     "samples": [{"prefills": [[new, ctx_before], ...], "decodes": [ctx, ...], "step_s": float}]}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.chunks import largest_root, refine_chunk
from hyperflexis.perf.nnls import nnls

NUM_COEFFICIENTS = 5
Coefficients = tuple[float, float, float, float, float]
_META_KEYS = ("model", "device", "dtype")
_FIT_KEYS = ("coefficients", "median_rel_error", "samples")


@dataclass(frozen=True, slots=True)
class ProfiledCostModel:
    """The linear step-time model. Coefficients are non-negative, so it is monotone."""

    coefficients: Coefficients  # c0 s, c1 s/token, c2 s/attention pair, c3 s/decode, c4 s/KV token

    def __post_init__(self) -> None:
        values = tuple(self.coefficients)
        if len(values) != NUM_COEFFICIENTS:
            raise ValueError(
                f"invalid 'coefficients': expected {NUM_COEFFICIENTS} numbers, got {len(values)}"
            )
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"invalid 'coefficients[{i}]': expected a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"invalid 'coefficients[{i}]': must be finite and >= 0")
        object.__setattr__(self, "coefficients", tuple(float(v) for v in values))

    def predict(self, features: StepFeatures) -> float:
        c0, c1, c2, c3, c4 = self.coefficients
        return (
            c0
            + c1 * features.num_prefill_tokens
            + c2 * features.prefill_attn_tokens2
            + c3 * features.num_decodes
            + c4 * features.decode_ctx_tokens
        )

    def max_prefill_tokens(
        self, features_base: StepFeatures, ctx_before: int, budget_s: float, max_tokens: int
    ) -> int:
        """The largest chunk (<= max_tokens) at `ctx_before` that keeps the step within
        `budget_s`: a chunk of n adds (c2/2) n^2 + (c1 + c2 ctx) n, so it is a quadratic root.
        Same answer as `perf.base.largest_chunk`."""
        _, c1, c2, _, _ = self.coefficients
        slack = budget_s - self.predict(features_base)
        estimate = largest_root(c2 / 2, c1 + c2 * ctx_before, slack)
        return refine_chunk(self, features_base, ctx_before, budget_s, max_tokens, estimate)


@dataclass(slots=True)
class ProfileSample:
    """One measured engine step."""

    prefills: list[tuple[int, int]]  # (new tokens, context tokens before them) per prefill chunk
    decodes: list[int]  # context length of each decoding request
    step_s: float  # measured wall time of the step
    features: StepFeatures = field(init=False, repr=False, compare=False)  # of the batch above

    def __post_init__(self) -> None:
        self.prefills = [(int(new), int(ctx)) for new, ctx in self.prefills]
        self.decodes = [int(ctx) for ctx in self.decodes]
        if any(new < 1 or ctx < 0 for new, ctx in self.prefills):
            raise ValueError("invalid sample field 'prefills': need new >= 1 and ctx_before >= 0")
        if any(ctx < 0 for ctx in self.decodes):
            raise ValueError("invalid sample field 'decodes': context lengths must be >= 0")
        if not (math.isfinite(self.step_s) and self.step_s > 0):
            raise ValueError(f"invalid sample field 'step_s': must be > 0, got {self.step_s}")
        self.step_s = float(self.step_s)
        self.features = StepFeatures.of(self.prefills, self.decodes)


def feature_vector(features: StepFeatures) -> list[float]:
    """The regressors of the linear form, in coefficient order."""
    return [
        1.0,
        float(features.num_prefill_tokens),
        float(features.prefill_attn_tokens2),
        float(features.num_decodes),
        float(features.decode_ctx_tokens),
    ]


def fit(samples: Sequence[ProfileSample]) -> tuple[ProfiledCostModel, float]:
    """Least-squares coefficients, non-negative, minimising the *relative* error (each row is
    divided by its measured time, so a 5 ms decode step counts as much as a 200 ms prefill).
    Returns the model and its median relative error over the samples."""
    if not samples:
        raise ValueError("fit: 'samples' is empty")
    rows = np.array([feature_vector(sample.features) for sample in samples])
    times = np.array([sample.step_s for sample in samples])
    solution = nnls(rows / times[:, None], np.ones(len(samples)))
    values = [max(float(c), 0.0) for c in solution]
    model = ProfiledCostModel((values[0], values[1], values[2], values[3], values[4]))
    return model, median_relative_error(model, samples)


def median_relative_error(model: ProfiledCostModel, samples: Sequence[ProfileSample]) -> float:
    """median(|predicted - measured| / measured)."""
    if not samples:
        raise ValueError("'samples' is empty")
    errors = [abs(model.predict(s.features) - s.step_s) / s.step_s for s in samples]
    return float(np.median(errors))


# -- the profile file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """A profile file's contents."""

    model: str  # model name or path that was profiled
    device: str  # device it ran on, e.g. "NVIDIA H100 80GB HBM3" or "cpu"
    dtype: str  # weight dtype, e.g. "bfloat16"
    samples: list[ProfileSample]  # the measured steps
    coefficients: Coefficients  # the fitted model
    median_rel_error: float  # of the fit over the samples
    meta: dict[str, Any]  # any further keys the writer added

    def cost_model(self) -> ProfiledCostModel:
        return ProfiledCostModel(self.coefficients)


def write_profile(
    path: str | os.PathLike[str],
    samples: Sequence[ProfileSample],
    model: ProfiledCostModel,
    meta: Mapping[str, Any],
) -> None:
    """Save samples and fitted model. `meta` must hold "model", "device" and "dtype" strings; any
    other JSON-serialisable keys are kept. Written atomically (temp file, then rename)."""
    for key in _META_KEYS:
        if not isinstance(meta.get(key), str):
            raise ValueError(f"write_profile: meta field {key!r} must be a string")
    clashes = [key for key in _FIT_KEYS if key in meta]
    if clashes:
        raise ValueError(f"write_profile: meta must not set {clashes}")
    if not samples:
        raise ValueError("write_profile: 'samples' is empty")
    head = {key: meta[key] for key in _META_KEYS}
    head.update({key: value for key, value in meta.items() if key not in _META_KEYS})
    head["coefficients"] = list(model.coefficients)
    head["median_rel_error"] = median_relative_error(model, samples)
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()]
    sample_lines = [
        "    "
        + json.dumps(
            {"prefills": [list(p) for p in s.prefills], "decodes": s.decodes, "step_s": s.step_s}
        )
        for s in samples
    ]
    text = "{\n" + "\n".join(lines) + '\n  "samples": [\n' + ",\n".join(sample_lines) + "\n  ]\n}\n"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(target.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, target)


def read_profile(path: str | os.PathLike[str]) -> Profile:
    """Parse and check a profile file; a malformed one raises ValueError naming the field."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"profile {str(path)!r} is not valid JSON: {error}") from None
    where = f"profile {str(path)!r}"
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object at the top level")
    names = {key: _string(doc, key, where) for key in _META_KEYS}
    raw_coefficients = _get(doc, "coefficients", where)
    if not isinstance(raw_coefficients, list) or len(raw_coefficients) != NUM_COEFFICIENTS:
        raise ValueError(f"{where}: field 'coefficients' must be a list of {NUM_COEFFICIENTS}")
    try:
        model = ProfiledCostModel(tuple(raw_coefficients))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    error_value = _number(doc, "median_rel_error", where)
    raw_samples = _get(doc, "samples", where)
    if not isinstance(raw_samples, list):
        raise ValueError(f"{where}: field 'samples' must be a list")
    samples = [_sample(raw, f"{where}: field 'samples[{i}]") for i, raw in enumerate(raw_samples)]
    meta = {key: value for key, value in doc.items() if key not in (*_META_KEYS, *_FIT_KEYS)}
    return Profile(
        model=names["model"],
        device=names["device"],
        dtype=names["dtype"],
        samples=samples,
        coefficients=model.coefficients,
        median_rel_error=error_value,
        meta=meta,
    )


def load_profile(path: str | os.PathLike[str]) -> ProfiledCostModel:
    """The fitted model saved in a profile file."""
    return read_profile(path).cost_model()


def _get(doc: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise ValueError(f"{where}: missing field {key!r}")
    return doc[key]


def _string(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(doc, key, where)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string")
    return value


def _number(doc: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(doc, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: field {key!r} must be a number")
    return float(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _sample(raw: Any, where: str) -> ProfileSample:
    """`where` names the sample, e.g. "profile 'x.json': field 'samples[3]"."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}' must be an object")
    for key in ("prefills", "decodes", "step_s"):
        if key not in raw:
            raise ValueError(f"{where}.{key}' is missing")
    prefills = raw["prefills"]
    if not isinstance(prefills, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_is_count(v) for v in p) for p in prefills
    ):
        raise ValueError(f"{where}.prefills' must be a list of [new, ctx_before] counts")
    decodes = raw["decodes"]
    if not isinstance(decodes, list) or not all(_is_count(v) for v in decodes):
        raise ValueError(f"{where}.decodes' must be a list of context lengths")
    step_s = raw["step_s"]
    if isinstance(step_s, bool) or not isinstance(step_s, (int, float)):
        raise ValueError(f"{where}.step_s' must be a number")
    try:
        return ProfileSample([(p[0], p[1]) for p in prefills], list(decodes), float(step_s))
    except ValueError as error:
        raise ValueError(f"{where}': {error}") from None
