"""The cluster simulator: real schedulers and dispatchers on a virtual clock (DESIGN.md §1)."""

from hyperflexis.sim.deployment import Deployment, KVTransferModel
from hyperflexis.sim.result import SimResult
from hyperflexis.sim.setup import (
    SimSetup,
    cost_model_for,
    make_simulator,
    natural_dispatcher,
    simulate,
    simulate_with_records,
)
from hyperflexis.sim.simulator import ClusterSimulator

__all__ = [
    "ClusterSimulator",
    "Deployment",
    "KVTransferModel",
    "SimResult",
    "SimSetup",
    "cost_model_for",
    "make_simulator",
    "natural_dispatcher",
    "simulate",
    "simulate_with_records",
]
