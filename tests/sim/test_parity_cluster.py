"""Parity without torch (DESIGN.md §1): one seeded workload through real `LLMEngine`s (a fake
step runner, a virtual clock that moves by the latency model's predictions) and through the
simulator gives the same decisions: which request got how many tokens in which step on which
instance, where the dispatcher sent it, and when its first token came and it ended. Several mixed
instances behind the hyperflexis dispatcher, and P/D with its KV hand-off."""

from __future__ import annotations

import pytest

from hyperflexis.cluster import Dispatcher, make_dispatcher
from hyperflexis.core import SLOClasses
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import ClusterSimulator, Deployment, SimResult
from hyperflexis.workloads import Workload, build_workload, make_lengths, parse_slo_mix, poisson
from tests.sim.engine_cluster import EngineCluster, EngineRun, Outcome
from tests.sim.helpers import COST_MODEL, TRANSFER

CLASSES = SLOClasses()  # interactive is `late: reject`: admission control turns some away
NUM_KV_BLOCKS = 40  # of 16 tokens: small, so the busiest instances preempt
BLOCK_SIZE = 16


def _workload(num_requests: int, rate_rps: float, seed: int) -> Workload:
    return build_workload(
        seed=seed,
        slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", CLASSES),
        arrival=poisson(rate_rps),
        prompt_lens=make_lengths("uniform", lo=5, hi=300),
        output_lens=make_lengths("uniform", lo=2, hi=60),
        num_requests=num_requests,
    )


def _both(
    deployment: Deployment,
    policy: str,
    dispatch: str,
    workload: Workload,
    *,
    fast_forward: bool = False,
    admission_control: bool = True,
) -> tuple[SimResult, EngineRun]:
    budget = 512 if policy == "distserve" else 128  # distserve does not chunk: a whole prompt
    config = SchedulerConfig(max_num_batched_tokens=budget, admission_control=admission_control)

    def dispatcher() -> Dispatcher:  # stateful (requests in flight): one per run
        return make_dispatcher(dispatch, COST_MODEL, config, admission_control)

    simulated = ClusterSimulator(
        deployment,
        policy,
        config,
        COST_MODEL,
        dispatcher(),
        CLASSES,
        NUM_KV_BLOCKS,
        BLOCK_SIZE,
        TRANSFER,
        fast_forward=fast_forward,
        record_steps=True,
    ).run(workload)
    engines = EngineCluster(
        deployment,
        policy,
        config,
        COST_MODEL,
        dispatcher(),
        CLASSES,
        NUM_KV_BLOCKS,
        BLOCK_SIZE,
        TRANSFER,
    ).run(workload)
    return simulated, engines


def _outcomes(result: SimResult) -> dict[str, Outcome]:
    return {
        r.request_id: (
            r.request_id,
            r.status,
            r.arrival_s,
            r.first_token_s,
            r.finish_s,
            r.num_output_tokens,
        )
        for r in result.records
    }


def _assert_same(simulated: SimResult, engines: EngineRun) -> None:
    """Exactly: the float arithmetic of both paths is the same, fast-forward windows included."""
    assert simulated.step_logs.keys() == engines.step_logs.keys()
    for instance_id, engine_log in engines.step_logs.items():
        sim_log = simulated.step_logs[instance_id]
        assert len(sim_log) == len(engine_log), instance_id
        for index, (sim_step, engine_step) in enumerate(zip(sim_log, engine_log, strict=True)):
            assert sim_step == engine_step, f"{instance_id} step {index}"
    assert simulated.routes == engines.routes
    assert simulated.num_preemptions == engines.num_preemptions
    assert _outcomes(simulated) == engines.outcomes


@pytest.mark.parametrize("fast_forward", [False, True], ids=["stepped", "fast-forward"])
@pytest.mark.parametrize("policy", ["hyperflexis", "fcfs"])
def test_mixed_instances_behind_the_hyperflexis_dispatcher(policy: str, fast_forward: bool) -> None:
    workload = _workload(90, 60.0, seed=1)
    simulated, engines = _both(
        Deployment.collocated(3), policy, "hyperflexis", workload, fast_forward=fast_forward
    )
    _assert_same(simulated, engines)
    # The workload exercises what could diverge: every instance, batching, chunked prefill,
    # preemption, rejections by the dispatcher, and decode-only stretches to fast-forward.
    assert all(engines.step_logs.values())
    steps = [chunks for log in engines.step_logs.values() for _, chunks in log]
    assert any(len(chunks) > 1 for chunks in steps)
    assert any(start > 0 and n > 1 for chunks in steps for _, start, n in chunks)
    assert engines.num_preemptions > 0
    statuses = [outcome[1] for outcome in engines.outcomes.values()]
    assert {"completed", "rejected"} <= set(statuses)
    if fast_forward:
        assert simulated.num_fast_forward_steps > 0


@pytest.mark.parametrize("fast_forward", [False, True], ids=["stepped", "fast-forward"])
@pytest.mark.parametrize("policy", ["hyperflexis", "distserve"])
def test_prefill_decode_hand_off(policy: str, fast_forward: bool) -> None:
    links = {"prefill-0": frozenset({"decode-0", "decode-1"}), "prefill-1": frozenset({"decode-1"})}
    deployment = Deployment.disaggregated(2, 2, links=links)
    workload = _workload(80, 40.0, seed=2)
    simulated, engines = _both(
        deployment, policy, "hyperflexis", workload, fast_forward=fast_forward
    )
    _assert_same(simulated, engines)
    # Every request crossed from a prefill to a linked decode instance; both sides are used.
    assert all(len(path) == 2 and path[1] in links[path[0]] for path in engines.routes.values())
    assert {path[1] for path in engines.routes.values()} == {"decode-0", "decode-1"}
    assert all(engines.step_logs.values())
    assert engines.num_preemptions > 0
