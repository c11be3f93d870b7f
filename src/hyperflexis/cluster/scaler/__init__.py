"""The scaler (DESIGN.md §6): observes demand, sizes each pool from the latency model, and
returns scaling decisions (scale out, scale in, role switch) for a driver to apply."""

from hyperflexis.cluster.scaler.base import Scaler, ScalerContext
from hyperflexis.cluster.scaler.baselines import (
    StaticScaler,
    ThresholdScaler,
    ThresholdScalerConfig,
)
from hyperflexis.cluster.scaler.capacity import CapacityModel, InstanceCapacity
from hyperflexis.cluster.scaler.config import HyperFlexisScalerConfig
from hyperflexis.cluster.scaler.cost import CostMeter
from hyperflexis.cluster.scaler.decision import (
    INSTANCE_STATES,
    ClusterView,
    InstanceState,
    InstanceView,
    PoolLimits,
    ScalingDecision,
)
from hyperflexis.cluster.scaler.forecast import Trend, fit_trend
from hyperflexis.cluster.scaler.hyperflexis import HyperFlexisScaler, NoRoleSwitchScaler
from hyperflexis.cluster.scaler.observe import (
    DemandObserver,
    Observation,
    late_work_tokens,
    queue_laxity_s,
)
from hyperflexis.cluster.scaler.registry import (
    make_scaler,
    register_scaler,
    scaler_class,
    scaler_names,
)
from hyperflexis.cluster.scaler.sizing import PoolPlan, fluid_attainment, size_pool
from hyperflexis.cluster.scaler.startup import StartupModel, StartupPlan

for _cls in (HyperFlexisScaler, NoRoleSwitchScaler, StaticScaler, ThresholdScaler):
    register_scaler(_cls)
del _cls

__all__ = [
    "INSTANCE_STATES",
    "CapacityModel",
    "ClusterView",
    "CostMeter",
    "DemandObserver",
    "HyperFlexisScaler",
    "HyperFlexisScalerConfig",
    "InstanceCapacity",
    "InstanceState",
    "InstanceView",
    "NoRoleSwitchScaler",
    "Observation",
    "PoolLimits",
    "PoolPlan",
    "Scaler",
    "ScalerContext",
    "ScalingDecision",
    "StartupModel",
    "StartupPlan",
    "StaticScaler",
    "ThresholdScaler",
    "ThresholdScalerConfig",
    "Trend",
    "fit_trend",
    "fluid_attainment",
    "late_work_tokens",
    "make_scaler",
    "queue_laxity_s",
    "register_scaler",
    "scaler_class",
    "scaler_names",
    "size_pool",
]
