"""An elastic simulation as configs: a `SimSetup` (the initial cluster and everything else) plus
a `ScalingSetup` (which scaler, pool bounds, link policy, transition times), built into an
`ElasticSimulator`; `simulate_elastic` runs it and returns what `hyperflexis simulate --scaler`
writes."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from hyperflexis.cluster.links import LINK_POLICIES, LinkPolicy
from hyperflexis.cluster.migration import DEFAULT_DRAIN_DEADLINE_S
from hyperflexis.cluster.scaler import (
    CostMeter,
    PoolLimits,
    ScalerContext,
    make_scaler,
    scaler_class,
)
from hyperflexis.core.slo import SLOClasses
from hyperflexis.scheduler import Role
from hyperflexis.sim.elastic import ElasticSimulator, ElasticTimes
from hyperflexis.sim.elastic_result import ElasticResult
from hyperflexis.sim.setup import SimSetup, build_parts
from hyperflexis.sim.simulator import ProgressCallback
from hyperflexis.workloads.spec import Workload


@dataclass(frozen=True, slots=True)
class ScalingSetup:
    """How the cluster scales; the `SimSetup`'s deployment is where it starts."""

    scaler: str = "hyperflexis"  # `cluster.scaler` registry name
    min_instances: int = 1  # per pool (mixed; or prefill and decode each)
    max_instances: int = 16  # per pool
    control_interval_s: float = 10.0  # how often the scaler decides
    link_policy: LinkPolicy = "balanced"  # P/D links as instances come and go
    link_fanout: int = 2  # decode links per prefill instance (balanced)
    role_switch_s: float = 1.0  # a drained instance's flip to the other P/D role
    stop_s: float = 1.0  # a drained instance's shutdown
    init_s: float = 3.0  # a new instance's start-up work besides loading weights
    # A drain's decodes that would outlive this (after the decision) migrate; inf: none does.
    drain_deadline_s: float = DEFAULT_DRAIN_DEADLINE_S
    # A new instance's decision to serving as executed (a live run's measured start); None:
    # the scaler's own estimate (weights + `init_s`), which it plans with either way.
    start_s: float | None = None
    scaler_config: Any = None  # the scaler's settings dataclass; None: its defaults

    def __post_init__(self) -> None:
        scaler_class(self.scaler)  # unknown names fail here
        if self.link_policy not in LINK_POLICIES:
            raise ValueError(f"invalid scaling field 'link_policy': {self.link_policy!r}")
        PoolLimits(self.min_instances, self.max_instances)  # checks the bounds
        self.times()  # checks the times
        if self.init_s < 0:
            raise ValueError("invalid scaling field 'init_s': must be >= 0")

    def echo(self) -> dict[str, Any]:
        return {
            "scaler": self.scaler,
            "min_instances": self.min_instances,
            "max_instances": self.max_instances,
            "control_interval_s": self.control_interval_s,
            "link_policy": self.link_policy,
            "link_fanout": self.link_fanout,
            "role_switch_s": self.role_switch_s,
            "stop_s": self.stop_s,
            "init_s": self.init_s,
            "drain_deadline_s": self.drain_deadline_s,
            "start_s": self.start_s,
        }

    def times(self) -> ElasticTimes:
        """The transition times the simulator executes."""
        return ElasticTimes(
            self.control_interval_s, self.role_switch_s, self.stop_s,
            drain_deadline_s=self.drain_deadline_s, start_s=self.start_s,
        )  # fmt: skip


def make_elastic_simulator(
    setup: SimSetup,
    scaling: ScalingSetup,
    slo_classes: SLOClasses,
    workload: Workload,
    *,
    record_steps: bool = False,
) -> ElasticSimulator:
    """The elastic simulator of `setup` and `scaling`, built as `sim.make_simulator` builds a
    fixed one. Unknown names raise ValueError."""
    parts = build_parts(setup, workload)
    hardware, model, config = parts.hardware, parts.model, parts.config
    num_kv_blocks = parts.num_kv_blocks
    deployment = setup.deployment
    context = ScalerContext(
        hardware,
        model,
        parts.cost_model,
        scheduler_config=config,
        kv_cache_tokens=num_kv_blocks * setup.block_size,
        init_s=scaling.init_s,
    )
    scaler = make_scaler(scaling.scaler, context, _scaler_config(scaling))
    roles: tuple[Role, ...] = ("prefill", "decode") if deployment.is_disaggregated else ("mixed",)
    limits = PoolLimits(scaling.min_instances, scaling.max_instances)
    simulator = ElasticSimulator(
        deployment,
        setup.policy,
        config,
        parts.cost_model,
        parts.dispatcher,
        slo_classes,
        num_kv_blocks,
        setup.block_size,
        parts.transfer,
        scaler=scaler,
        pools=dict.fromkeys(roles, limits),
        cost_meter=CostMeter(hardware.price_per_hour, model.tensor_parallel),
        times=scaling.times(),
        link_policy=scaling.link_policy,
        link_fanout=scaling.link_fanout,
        fast_forward=setup.fast_forward,
        record_steps=record_steps,
        step_noise=setup.step_noise,
    )
    simulator.cluster.response_latency_s = setup.response_latency_s
    return simulator


def _scaler_config(scaling: ScalingSetup) -> Any:
    """The scaler's settings, with its control interval set to the driver's (the scaler plans
    one interval ahead, so the two must agree)."""
    config = scaling.scaler_config
    config_type = scaler_class(scaling.scaler).config_type
    if config is None and config_type is not None:
        config = config_type()
    if config is not None and any(
        f.name == "control_interval_s" for f in dataclasses.fields(config)
    ):
        config = dataclasses.replace(config, control_interval_s=scaling.control_interval_s)
    return config


def run_elastic(
    setup: SimSetup,
    scaling: ScalingSetup,
    slo_classes: SLOClasses,
    workload: Workload,
    on_progress: ProgressCallback | None = None,
) -> tuple[ElasticResult, float]:
    """The run's result and its wall time in seconds."""
    if not workload:
        raise ValueError("invalid workload: it has no requests")
    simulator = make_elastic_simulator(setup, scaling, slo_classes, workload)
    started = time.perf_counter()
    result = simulator.run_elastic(workload, on_progress)
    return result, time.perf_counter() - started


def simulate_elastic(
    setup: SimSetup,
    scaling: ScalingSetup,
    slo_classes: SLOClasses,
    workload: Workload,
    on_progress: ProgressCallback | None = None,
    *,
    bin_s: float = 60.0,
) -> dict[str, Any]:
    """Run `workload` with scaling; the results as `hyperflexis simulate --scaler` writes them:
    the fixed run's keys, plus `instance_seconds` integrated over the instances' lives,
    `cost_usd`, the scaling counts and a `time_series` in `bin_s` intervals."""
    result, wall_s = run_elastic(setup, scaling, slo_classes, workload, on_progress)
    summary = result.summary(bin_s)
    summary["sim_wall_s"] = wall_s
    summary["config"] = {**setup.echo(), "scaling": scaling.echo()}
    return summary
