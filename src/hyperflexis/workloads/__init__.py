"""Workloads: seeded request streams (arrivals x lengths x SLO classes) from synthetic
distributions or Azure traces, shared by the simulator and the live load client."""

from hyperflexis.workloads.arrivals import (
    ArrivalProcess,
    ConstantArrivals,
    GammaArrivals,
    PoissonArrivals,
    arrival_names,
    gamma,
    generate_arrivals,
    make_arrival,
    poisson,
    with_rate,
)
from hyperflexis.workloads.build import build_workload, concat_phases
from hyperflexis.workloads.lengths import (
    FixedLengths,
    LengthDistribution,
    LogNormalLengths,
    UniformLengths,
    fit_lengths,
    length_names,
    make_lengths,
    parse_lengths,
)
from hyperflexis.workloads.slo_mix import SLOMix, assign_classes, parse_slo_mix
from hyperflexis.workloads.spec import (
    RequestSpec,
    Workload,
    load_workload,
    make_workload,
    mean_rate_rps,
    save_workload,
)
from hyperflexis.workloads.steady import (
    MIN_STEADY_DURATION_S,
    loop_trace,
    steady_num_requests,
    steady_workload,
)
from hyperflexis.workloads.trace import Trace, read_azure_trace, scale_to_rate

__all__ = [
    "MIN_STEADY_DURATION_S",
    "ArrivalProcess",
    "ConstantArrivals",
    "FixedLengths",
    "GammaArrivals",
    "LengthDistribution",
    "LogNormalLengths",
    "PoissonArrivals",
    "RequestSpec",
    "SLOMix",
    "Trace",
    "UniformLengths",
    "Workload",
    "arrival_names",
    "assign_classes",
    "build_workload",
    "concat_phases",
    "fit_lengths",
    "gamma",
    "generate_arrivals",
    "length_names",
    "load_workload",
    "loop_trace",
    "make_arrival",
    "make_lengths",
    "make_workload",
    "mean_rate_rps",
    "parse_lengths",
    "parse_slo_mix",
    "poisson",
    "read_azure_trace",
    "save_workload",
    "scale_to_rate",
    "steady_num_requests",
    "steady_workload",
    "with_rate",
]
