"""Step latency models: profiled, analytic (hardware + model specs), online correction."""

from hyperflexis.perf.analytic import AnalyticCostModel
from hyperflexis.perf.base import StepCostModel, StepFeatures, largest_chunk, max_prefill_tokens
from hyperflexis.perf.online import OnlineCorrection
from hyperflexis.perf.profiled import (
    Profile,
    ProfiledCostModel,
    ProfileSample,
    fit,
    load_profile,
    read_profile,
    write_profile,
)
from hyperflexis.perf.registry import DEFAULT_FIXED_COEFFICIENTS, cost_model_kinds, make_cost_model
from hyperflexis.perf.specs import (
    HardwareSpec,
    ModelSpec,
    hardware_names,
    hardware_spec,
    kv_cache_tokens,
    model_names,
    model_spec,
)

__all__ = [
    "DEFAULT_FIXED_COEFFICIENTS",
    "AnalyticCostModel",
    "HardwareSpec",
    "ModelSpec",
    "OnlineCorrection",
    "Profile",
    "ProfileSample",
    "ProfiledCostModel",
    "StepCostModel",
    "StepFeatures",
    "cost_model_kinds",
    "fit",
    "hardware_names",
    "hardware_spec",
    "kv_cache_tokens",
    "largest_chunk",
    "load_profile",
    "make_cost_model",
    "max_prefill_tokens",
    "model_names",
    "model_spec",
    "read_profile",
    "write_profile",
]
