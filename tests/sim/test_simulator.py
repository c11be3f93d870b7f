"""The simulator end to end on small clusters: every request accounted for once, KV all freed,
P/D hand-offs only over links, rejections recorded, and fast-forward changing nothing."""

from __future__ import annotations

import math

import pytest

from hyperflexis.bench.metrics import check_conservation
from hyperflexis.core import SLOClass, SLOClasses
from hyperflexis.scheduler import policy_names
from hyperflexis.sim import Deployment, SimResult
from tests.sim.helpers import EveryOtherRejected, simulator, workload

COLLOCATED = Deployment(num_mixed=2)
PAIRS = {"prefill-0": frozenset({"decode-0"}), "prefill-1": frozenset({"decode-1"})}
DISAGGREGATED = Deployment(num_prefill=2, num_decode=2, links=PAIRS)


def _check_accounting(result: SimResult, offered: list[str]) -> None:
    check_conservation(offered, result.records)
    assert result.num_unfinished == 0
    assert all(n == 0 for n in result.kv_blocks_in_use.values()), result.kv_blocks_in_use


@pytest.mark.parametrize("policy", policy_names())
@pytest.mark.parametrize("deployment", [COLLOCATED, DISAGGREGATED], ids=["mixed", "pd"])
def test_every_request_ends_once_and_kv_is_freed(policy: str, deployment: Deployment) -> None:
    # Overloaded on a small KV cache: preemptions happen, and yet nothing is lost.
    load = workload(num_requests=80, rate_rps=60.0)
    result = simulator(policy, deployment, num_kv_blocks=300).run(load)
    _check_accounting(result, [spec.request_id for spec in load])
    assert all(r.status == "completed" for r in result.records)
    assert {r.request_id: r.num_output_tokens for r in result.records} == {
        spec.request_id: spec.output_len for spec in load
    }
    assert result.instance_seconds == pytest.approx(result.duration_s * deployment.num_instances)


def test_preemption_happens_under_kv_pressure() -> None:
    result = simulator("fcfs", COLLOCATED, num_kv_blocks=150).run(workload(80, 60.0))
    assert result.num_preemptions > 0


def test_pd_requests_decode_on_a_linked_instance() -> None:
    load = workload(num_requests=50, rate_rps=20.0)
    result = simulator("hyperflexis", DISAGGREGATED, dispatch="hyperflexis").run(load)
    _check_accounting(result, [spec.request_id for spec in load])
    for record in result.records:
        route = result.routes[record.request_id]
        if record.num_output_tokens == 1:  # done at the prefill instance
            assert len(route) == 1 and route[0].startswith("prefill-")
            continue
        prefill, decode = route
        assert decode in PAIRS[prefill]
    used = {route[-1] for route in result.routes.values()}
    assert used == {"decode-0", "decode-1"}


def test_pd_transfer_delays_the_second_token() -> None:
    load = workload(num_requests=1, rate_rps=1.0, mean_prompt=1000)
    collocated = simulator("fcfs", Deployment(num_mixed=1)).run(load).records[0]
    pd = simulator("fcfs", Deployment(num_prefill=1, num_decode=1)).run(load).records[0]
    assert pd.ttft_s == pytest.approx(collocated.ttft_s)
    assert pd.tpot_s is not None and collocated.tpot_s is not None
    assert pd.tpot_s > collocated.tpot_s


def test_dispatcher_rejections_are_recorded() -> None:
    load = workload(num_requests=30, rate_rps=10.0)
    result = simulator("fcfs", COLLOCATED, dispatch=EveryOtherRejected()).run(load)
    _check_accounting(result, [spec.request_id for spec in load])
    rejected = [r for r in result.records if r.status == "rejected"]
    assert len(rejected) == 10
    assert all(r.first_token_s is None and not r.attained for r in rejected)
    assert result.summary()["num_rejected"] == 10


def test_scheduler_rejections_are_recorded_with_admission_control() -> None:
    # Classes that ask to be rejected when late, offered far beyond capacity.
    classes = SLOClasses(
        (
            SLOClass("interactive", 0.2, 0.04, 0, late="reject"),
            SLOClass("standard", 1.0, 0.1, 1, late="reject"),
            SLOClass("batch", 5.0, 0.3, 2, late="reject"),
        )
    )
    load = workload(num_requests=120, rate_rps=400.0)
    sim = simulator(
        "hyperflexis", COLLOCATED, dispatch="round-robin", admission_control=True, classes=classes
    )
    result = sim.run(load)
    _check_accounting(result, [spec.request_id for spec in load])
    assert result.summary()["num_rejected"] > 0


@pytest.mark.parametrize("policy", policy_names())
@pytest.mark.parametrize(
    ("deployment", "dispatch", "num_kv_blocks"),
    [
        (COLLOCATED, "round-robin", 200),
        (COLLOCATED, "round-robin", 130),  # decodes run short of KV and get preempted
        (COLLOCATED, "hyperflexis", 200),
        (DISAGGREGATED, "hyperflexis", 200),
    ],
    ids=["mixed-rr", "mixed-rr-kv-pressure", "mixed-hyperflexis", "pd-hyperflexis"],
)
def test_fast_forward_matches_stepping_one_by_one(
    policy: str, deployment: Deployment, dispatch: str, num_kv_blocks: int
) -> None:
    load = workload(num_requests=50, rate_rps=15.0)
    runs = [
        simulator(
            policy,
            deployment,
            dispatch=dispatch,
            num_kv_blocks=num_kv_blocks,
            fast_forward=ff,
            record_steps=True,
        ).run(load)
        for ff in (False, True)
    ]
    stepped, fast = runs
    assert fast.num_fast_forward_steps > 0.3 * fast.num_steps  # it does skip work
    if num_kv_blocks < 200 and policy != "distserve":  # whole prompts: fewer run at once
        assert stepped.num_preemptions > 0
    assert fast.num_steps == stepped.num_steps
    assert fast.step_logs == stepped.step_logs  # the very same batches at the same times
    by_id = {r.request_id: r for r in stepped.records}
    for record in fast.records:
        other = by_id[record.request_id]
        assert record.status == other.status
        for name in ("ttft_s", "tpot_s", "e2e_s", "max_itl_s", "max_token_lateness_s"):
            a, b = getattr(record, name), getattr(other, name)
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-6), name
    assert fast.summary() == stepped.summary() | {
        "num_fast_forward_steps": fast.num_fast_forward_steps
    }


def test_a_simulator_runs_once() -> None:
    sim = simulator("fcfs", COLLOCATED)
    sim.run(workload(3))
    with pytest.raises(RuntimeError):
        sim.run(workload(3))


def test_invalid_deployments_are_rejected() -> None:
    with pytest.raises(ValueError, match="either mixed"):
        Deployment(num_mixed=2, num_prefill=1, num_decode=1)
    with pytest.raises(ValueError, match="at least one prefill and one decode"):
        Deployment(num_prefill=2)
    with pytest.raises(ValueError, match="links"):
        Deployment(num_prefill=1, num_decode=1, links={"prefill-0": frozenset({"decode-7"})})
