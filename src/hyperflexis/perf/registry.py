"""The latency-model registry: `make_cost_model(kind, **kwargs)`, as configs and the CLI name
them. Unknown kinds and unexpected arguments fail loudly."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence

from hyperflexis.core.registry import Registry
from hyperflexis.perf.analytic import AnalyticCostModel
from hyperflexis.perf.base import StepCostModel
from hyperflexis.perf.profiled import ProfiledCostModel, load_profile
from hyperflexis.perf.specs import HardwareSpec, ModelSpec, hardware_spec, model_spec

# A fixed linear model near Llama-3.1-8B on one H100, read off its roofline (`AnalyticCostModel`):
# 7 ms to stream the weights, 27 us of GEMMs per prefill token, 0.88 ns per attention pair, a small
# per-decode cost and 49 ns to read one token's KV (128 KiB at 80% of 3.35 TB/s).
DEFAULT_FIXED_COEFFICIENTS = (7.0e-3, 2.7e-5, 8.8e-10, 1.0e-5, 4.9e-8)


def _analytic(
    *,
    hardware: str | HardwareSpec,
    model: str | ModelSpec,
    tensor_parallel: int | None = None,
) -> AnalyticCostModel:
    """Roofline of `model` on `hardware` (registry names or specs); `tensor_parallel` overrides
    the model's default sharding."""
    hw = hardware_spec(hardware) if isinstance(hardware, str) else hardware
    spec = model_spec(model) if isinstance(model, str) else model
    if tensor_parallel is not None:
        spec = spec.with_tensor_parallel(tensor_parallel)
    return AnalyticCostModel(hw, spec)


def _profiled(*, path: str | os.PathLike[str]) -> ProfiledCostModel:
    """The model fitted by `hyperflexis profile`, from its JSON file."""
    return load_profile(path)


def _fixed(*, coefficients: Sequence[float] = DEFAULT_FIXED_COEFFICIENTS) -> ProfiledCostModel:
    """The linear form with given coefficients: for tests and sim-vs-engine parity runs."""
    values = tuple(coefficients)
    return ProfiledCostModel(values)  # type: ignore[arg-type]  # length checked there


_KINDS: Registry[Callable[..., StepCostModel]] = Registry("cost model kind")
_KINDS.add("analytic", _analytic)
_KINDS.add("profiled", _profiled)
_KINDS.add("fixed", _fixed)
cost_model_kinds = _KINDS.names


def make_cost_model(kind: str, **kwargs: object) -> StepCostModel:
    """A latency model: `analytic` (hardware=, model=, tensor_parallel=), `profiled` (path=) or
    `fixed` (coefficients=)."""
    factory = _KINDS.get(kind)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"cost model {kind!r}: {error}; it takes {', '.join(signature.parameters)}"
        ) from None
    return factory(**kwargs)
