"""Small elastic clusters for the elastic simulator tests: a slow linear latency model (so a few
requests per second already need several instances), a scaler with short windows, and workloads
made of phases of constant rate and lengths."""

from __future__ import annotations

from collections.abc import Sequence

from hyperflexis.cluster import Dispatcher, make_dispatcher
from hyperflexis.cluster.links import LinkPolicy
from hyperflexis.cluster.scaler import (
    CostMeter,
    HyperFlexisScalerConfig,
    PoolLimits,
    ScalerContext,
    make_scaler,
    scaler_class,
)
from hyperflexis.core import SLOClasses
from hyperflexis.perf import hardware_spec, make_cost_model, model_spec
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import Deployment, KVTransferModel
from hyperflexis.sim.elastic import ElasticSimulator, ElasticTimes
from hyperflexis.workloads import (
    Workload,
    build_workload,
    concat_phases,
    make_lengths,
    parse_slo_mix,
    poisson,
)

# 10 ms per step, 0.2 ms per prefill token, 1 ms per decode: one instance prefills ~4k tok/s.
COST_MODEL = make_cost_model("fixed", coefficients=(1e-2, 2e-4, 1e-9, 1e-3, 5e-8))
TRANSFER = KVTransferModel(bytes_per_token=131072, bandwidth_bytes_s=50e9, latency_s=1e-4)
CLASSES = SLOClasses()
NUM_KV_BLOCKS = 400
CONTROL_INTERVAL_S = 2.0
TIMES = ElasticTimes(control_interval_s=CONTROL_INTERVAL_S, role_switch_s=1.0, stop_s=1.0)
FAST_SCALER = HyperFlexisScalerConfig(
    control_interval_s=CONTROL_INTERVAL_S,
    window_s=20.0,
    bin_s=2.0,
    min_observed_s=4.0,
    scale_in_window_s=20.0,
    cooldown_s=10.0,
)

Phase = tuple[float, float, int, int]  # (rate_rps, duration_s, mean prompt, mean output)


def phased_workload(phases: Sequence[Phase], seed: int = 0) -> Workload:
    """Poisson phases one after the other, each with its own lognormal lengths."""
    return concat_phases(
        [
            (
                build_workload(
                    seed=seed + k,
                    slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", CLASSES),
                    arrival=poisson(rate_rps),
                    prompt_lens=make_lengths("lognormal", mean=prompt, sigma=0.5, max_len=3000),
                    output_lens=make_lengths("lognormal", mean=output, sigma=0.5, max_len=1000),
                    num_requests=int(rate_rps * duration_s),
                    id_prefix=f"phase{k}-",
                ),
                duration_s,
            )
            for k, (rate_rps, duration_s, prompt, output) in enumerate(phases)
        ]
    )


def elastic(
    deployment: Deployment,
    scaler: str = "hyperflexis",
    *,
    dispatch: str | Dispatcher = "round-robin",
    link_policy: LinkPolicy = "balanced",
    link_fanout: int = 2,
    max_instances: int = 8,
    min_instances: int = 1,
    times: ElasticTimes = TIMES,
) -> ElasticSimulator:
    config = SchedulerConfig(
        role="prefill" if deployment.is_disaggregated else "mixed", max_num_batched_tokens=512
    )
    if isinstance(dispatch, str):
        dispatcher = make_dispatcher(dispatch, COST_MODEL, config)
    else:
        dispatcher = dispatch
    context = ScalerContext(
        hardware_spec("h100"),
        model_spec("llama-3.1-8b"),
        COST_MODEL,
        scheduler_config=config,
        kv_cache_tokens=NUM_KV_BLOCKS * 16,
    )
    settings = FAST_SCALER if scaler_class(scaler).config_type is HyperFlexisScalerConfig else None
    roles = ("prefill", "decode") if deployment.is_disaggregated else ("mixed",)
    return ElasticSimulator(
        deployment,
        "hyperflexis",
        config,
        COST_MODEL,
        dispatcher,
        CLASSES,
        NUM_KV_BLOCKS,
        16,
        TRANSFER,
        scaler=make_scaler(scaler, context, settings),
        pools=dict.fromkeys(roles, PoolLimits(min_instances, max_instances)),  # type: ignore[arg-type]
        cost_meter=CostMeter(price_per_hour=3.6),
        times=times,
        link_policy=link_policy,
        link_fanout=link_fanout,
    )
