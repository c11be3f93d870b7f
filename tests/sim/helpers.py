"""Small simulated clusters for the simulator tests: a fixed linear latency model, a tiny KV
cache so preemption happens, and a synthetic workload."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hyperflexis.cluster import (
    DispatchDecision,
    Dispatcher,
    DispatchRequest,
    LoadSnapshot,
    make_dispatcher,
)
from hyperflexis.core import SLOClasses
from hyperflexis.perf import make_cost_model
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import ClusterSimulator, Deployment, KVTransferModel
from hyperflexis.workloads import Workload, build_workload, make_lengths, parse_slo_mix, poisson

COST_MODEL = make_cost_model("fixed", coefficients=(5e-3, 2e-5, 1e-9, 1e-5, 5e-8))
TRANSFER = KVTransferModel(bytes_per_token=131072, bandwidth_bytes_s=50e9, latency_s=1e-4)
CLASSES = SLOClasses()


class EveryOtherRejected(Dispatcher):
    """Round-robin over the instances that take new requests, rejecting every third request."""

    name = "test-every-third-rejected"

    def __init__(self) -> None:
        super().__init__(COST_MODEL, SchedulerConfig())
        self.count = 0

    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        self.count += 1
        if self.count % 3 == 0:
            return DispatchDecision(None, "test-reject")
        candidates = [s for s in snapshots if s.role != "decode"]
        return DispatchDecision(candidates[self.count % len(candidates)].instance_id, "test")

    def choose_decode(
        self,
        request: DispatchRequest,
        prefill_instance_id: str,
        snapshots: Sequence[LoadSnapshot],
        links: Mapping[str, frozenset[str]],
        now: float,
    ) -> DispatchDecision:
        return super().choose_decode(request, prefill_instance_id, snapshots, links, now)


def workload(
    num_requests: int = 60, rate_rps: float = 20.0, seed: int = 0, mean_prompt: int = 300
) -> Workload:
    return build_workload(
        seed=seed,
        slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", CLASSES),
        arrival=poisson(rate_rps),
        prompt_lens=make_lengths("lognormal", mean=mean_prompt, sigma=0.8, max_len=1500),
        output_lens=make_lengths("lognormal", mean=60, sigma=0.8, max_len=300),
        num_requests=num_requests,
    )


def simulator(
    policy: str,
    deployment: Deployment,
    *,
    dispatch: str | Dispatcher = "round-robin",
    num_kv_blocks: int = 400,
    fast_forward: bool = True,
    record_steps: bool = False,
    admission_control: bool = False,
    classes: SLOClasses = CLASSES,
) -> ClusterSimulator:
    budget = 4096 if policy == "distserve" else 512
    config = SchedulerConfig(max_num_batched_tokens=budget, admission_control=admission_control)
    if isinstance(dispatch, str):
        dispatcher = make_dispatcher(dispatch, COST_MODEL, config, admission_control)
    else:
        dispatcher = dispatch
    return ClusterSimulator(
        deployment,
        policy,
        config,
        COST_MODEL,
        dispatcher,
        classes,
        num_kv_blocks,
        16,
        TRANSFER,
        fast_forward=fast_forward,
        record_steps=record_steps,
    )
