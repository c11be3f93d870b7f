"""A simulation as configs and the CLI name it: hardware, model, latency model, deployment,
policy and dispatcher by name, built into a `ClusterSimulator`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hyperflexis.bench.metrics import delivered_after
from hyperflexis.bench.records import simulated_row
from hyperflexis.cluster import Dispatcher, make_dispatcher
from hyperflexis.cluster.dispatch_hyperflexis import HyperFlexisDispatcher
from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf import (
    HardwareSpec,
    ModelSpec,
    StepCostModel,
    hardware_spec,
    kv_cache_tokens,
    make_cost_model,
    model_spec,
)
from hyperflexis.scheduler import Role, SchedulerConfig, policy_class
from hyperflexis.sim.deployment import Deployment, KVTransferModel
from hyperflexis.sim.simulator import ClusterSimulator, ProgressCallback
from hyperflexis.sim.step_noise import StepNoise
from hyperflexis.workloads.spec import Workload

# Each policy's natural dispatcher when none is named: the SLO-aware scheduler (and its
# ablations, `hyperflexis-no-...`) with the SLO-aware dispatcher, DistServe with DistServe's, and
# the load-blind baselines round-robin.
NATURAL_DISPATCHERS = {"hyperflexis": "hyperflexis", "distserve": "distserve"}
DEFAULT_DISPATCHER = "round-robin"


def natural_dispatcher(policy: str) -> str:
    family = "hyperflexis" if policy.startswith("hyperflexis-") else policy
    return NATURAL_DISPATCHERS.get(family, DEFAULT_DISPATCHER)


@dataclass(frozen=True, slots=True)
class SimSetup:
    """Everything about a simulated cluster except the workload."""

    hardware: str = "h100"  # `perf.hardware_spec` name
    model: str = "llama-3.1-8b"  # `perf.model_spec` name
    deployment: Deployment = field(default_factory=lambda: Deployment(num_mixed=4))
    policy: str = "hyperflexis"  # scheduling policy of every instance
    dispatch: str | None = None  # dispatcher; None: the policy's natural one
    profile_path: str | None = None  # a `hyperflexis profile` JSON instead of the roofline
    # Every instance's scheduler; the deployment sets each one's role (and a DistServe budget
    # below the longest prompt grows to hold it: `distserve_budget`). Its admission control also
    # applies to the dispatcher.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    memory_fraction: float = 0.9  # of HBM for weights + KV, as vLLM's gpu_memory_utilization
    block_size: int = 16  # tokens per KV block
    # KV blocks per instance; None: what `memory_fraction` of the hardware holds (a live
    # instance's own count, for a simulated twin of it).
    num_kv_blocks: int | None = None
    fast_forward: bool = True  # advance decode-only stretches in one go (same results)
    # Steps that vary (`sim.step_noise`): each step charged its prediction x (1 + profile_error)
    # x lognormal noise of this CV, seeded by `noise_seed`; the schedulers plan with the
    # prediction. Both 0: every step takes exactly its prediction.
    step_noise_cv: float = 0.0
    profile_error: float = 0.0
    noise_seed: int = 0
    # Decode-only steps' own CV and profile error (None: the above; `sim.step_noise`).
    decode_step_noise_cv: float | None = None
    decode_profile_error: float | None = None
    # How much later than the engine made them a request's tokens reach its client (the
    # response path outside the engine; `bench.metrics.delivered_after`). No decision sees it.
    response_latency_s: float = 0.0
    # A `hyperflexis profile`-format JSON whose model every step's time follows (times the noise
    # above) while the schedulers plan with `profile_path`'s; None: the planning model's.
    charge_profile_path: str | None = None

    def __post_init__(self) -> None:
        self.step_noise  # noqa: B018 (checks them)
        delivered_after(None, self.response_latency_s)  # checks it
        if self.scheduler.role != "mixed":
            raise ValueError(
                f"invalid 'scheduler.role' {self.scheduler.role!r}: the deployment sets each "
                "instance's role"
            )

    @property
    def step_noise(self) -> StepNoise:
        truth = None
        if self.charge_profile_path is not None:
            truth = make_cost_model("profiled", path=self.charge_profile_path)
        return StepNoise(
            self.step_noise_cv,
            self.profile_error,
            self.noise_seed,
            self.decode_step_noise_cv,
            self.decode_profile_error,
            truth,
        )

    @property
    def dispatcher_name(self) -> str:
        return self.dispatch if self.dispatch is not None else natural_dispatcher(self.policy)

    def echo(self) -> dict[str, Any]:
        """The setup as plain JSON values, for results files."""
        return {
            "hardware": self.hardware,
            "model": self.model,
            "num_mixed": self.deployment.num_mixed,
            "num_prefill": self.deployment.num_prefill,
            "num_decode": self.deployment.num_decode,
            "policy": self.policy,
            "dispatch": self.dispatcher_name,
            "latency_model": "profiled" if self.profile_path else "analytic",
            "profile_path": self.profile_path,
            **self.scheduler.knob_values(),
            "memory_fraction": self.memory_fraction,
            "block_size": self.block_size,
            "num_kv_blocks": self.num_kv_blocks,
            "fast_forward": self.fast_forward,
            "step_noise_cv": self.step_noise_cv,
            "profile_error": self.profile_error,
            "noise_seed": self.noise_seed,
            "decode_step_noise_cv": self.decode_step_noise_cv,
            "decode_profile_error": self.decode_profile_error,
            "response_latency_s": self.response_latency_s,
            "charge_profile_path": self.charge_profile_path,
        }


def distserve_budget(budget: int, workload: Workload) -> int:
    """DistServe's step token budget for `workload`: `budget`, or the least that holds its
    longest prompt whole (plus the first token a decode instance receives it with) where
    `budget` is smaller. DistServe never chunks a prompt."""
    longest = max((spec.prompt_len for spec in workload), default=0)
    return max(budget, longest + 1)


def cost_model_for(setup: SimSetup) -> StepCostModel:
    if setup.profile_path is not None:
        return make_cost_model("profiled", path=setup.profile_path)
    return make_cost_model("analytic", hardware=setup.hardware, model=setup.model)


class SimParts(NamedTuple):
    """What every simulator of a `SimSetup` is built from (fixed or elastic)."""

    hardware: HardwareSpec
    model: ModelSpec
    cost_model: StepCostModel
    num_kv_blocks: int  # per instance
    config: SchedulerConfig  # of the instances new requests enter
    transfer: KVTransferModel
    dispatcher: Dispatcher


def build_parts(setup: SimSetup, workload: Workload) -> SimParts:
    """Resolve `setup`'s names and size it for `workload` (DistServe's budget must hold its
    longest prompt). Unknown names raise ValueError."""
    hardware = hardware_spec(setup.hardware)
    model = model_spec(setup.model)
    policy_class(setup.policy)  # fail on an unknown policy before anything else is built
    cost_model = cost_model_for(setup)
    num_kv_blocks = setup.num_kv_blocks
    if num_kv_blocks is None:
        num_kv_blocks = kv_cache_tokens(hardware, model, setup.memory_fraction) // setup.block_size
    if num_kv_blocks < 1:
        raise ValueError(f"model {model.name!r} does not fit on {hardware.name!r}")
    budget = setup.scheduler.max_num_batched_tokens
    if setup.policy == "distserve":
        budget = distserve_budget(budget, workload)
    entry_role: Role = "prefill" if setup.deployment.is_disaggregated else "mixed"
    config = dataclasses.replace(setup.scheduler, role=entry_role, max_num_batched_tokens=budget)
    transfer = KVTransferModel.between(hardware, model)
    admission_control = config.admission_control
    dispatcher = make_dispatcher(setup.dispatcher_name, cost_model, config, admission_control)
    if isinstance(dispatcher, HyperFlexisDispatcher) and setup.deployment.is_disaggregated:
        dispatcher.kv_transfer_s = transfer.seconds
    return SimParts(hardware, model, cost_model, num_kv_blocks, config, transfer, dispatcher)


def make_simulator(
    setup: SimSetup,
    slo_classes: SLOClasses,
    workload: Workload,
    *,
    record_steps: bool = False,
) -> ClusterSimulator:
    """The simulator of `setup`, sized for `workload`. Unknown names raise ValueError."""
    parts = build_parts(setup, workload)
    simulator = ClusterSimulator(
        setup.deployment,
        setup.policy,
        parts.config,
        parts.cost_model,
        parts.dispatcher,
        slo_classes,
        parts.num_kv_blocks,
        setup.block_size,
        parts.transfer,
        fast_forward=setup.fast_forward,
        record_steps=record_steps,
        step_noise=setup.step_noise,
    )
    simulator.response_latency_s = setup.response_latency_s
    return simulator


def simulate(
    setup: SimSetup,
    slo_classes: SLOClasses,
    workload: Workload,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run `workload` on `setup`; the results as `hyperflexis simulate` writes them."""
    return simulate_with_records(setup, slo_classes, workload, on_progress)[0]


def simulate_with_records(
    setup: SimSetup,
    slo_classes: SLOClasses,
    workload: Workload,
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """As `simulate`, plus one `bench.records` row per offered request, in workload order
    (`hyperflexis report` recomputes the summary from them)."""
    if not workload:
        raise ValueError("invalid workload: it has no requests")
    simulator = make_simulator(setup, slo_classes, workload)
    started = time.perf_counter()
    result = simulator.run(workload, on_progress)
    wall_s = time.perf_counter() - started
    hardware = hardware_spec(setup.hardware)
    accelerators = model_spec(setup.model).tensor_parallel
    summary = result.summary()
    summary["cost_usd"] = result.instance_seconds / 3600 * hardware.price_per_hour * accelerators
    summary["sim_wall_s"] = wall_s
    summary["config"] = setup.echo()
    # The budget the instances ran with (DistServe's may have grown to its longest prompt).
    budget = simulator.factory.scheduler_config.max_num_batched_tokens
    summary["config"]["max_num_batched_tokens"] = budget
    by_id = {r.request_id: r for r in result.records}
    rows = []
    for spec in workload:
        route = result.routes.get(spec.request_id, ())
        record = dataclasses.replace(by_id[spec.request_id], instance=route[0] if route else None)
        rows.append(simulated_row(record, spec, route))
    return summary, rows


def with_policy(setup: SimSetup, policy: str, dispatch: str | None) -> SimSetup:
    return dataclasses.replace(setup, policy=policy, dispatch=dispatch)
