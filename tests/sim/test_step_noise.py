"""Steps that vary: seeded, reproducible noise on each step's charged time (the schedulers still
plan with the prediction), a fixed profile bias, and zero noise taking every step exactly at its
prediction."""

from __future__ import annotations

import statistics

import pytest

from hyperflexis.cluster import make_dispatcher
from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.profiled import ProfiledCostModel
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import ClusterSimulator, Deployment, SimResult, SimSetup
from hyperflexis.sim.step_noise import StepNoise
from hyperflexis.workloads import RequestSpec, Workload

from .helpers import CLASSES, COST_MODEL, TRANSFER, workload


def _run(
    noise: StepNoise | None,
    load: Workload,
    *,
    policy: str = "hyperflexis",
    deployment: Deployment | None = None,
    fast_forward: bool = True,
    response_latency_s: float = 0.0,
) -> SimResult:
    config = SchedulerConfig(max_num_batched_tokens=512)
    dispatcher = make_dispatcher("hyperflexis", COST_MODEL, config, False)
    extra = {} if noise is None else {"step_noise": noise}
    simulator = ClusterSimulator(
        deployment or Deployment(num_mixed=2),
        policy,
        config,
        COST_MODEL,
        dispatcher,
        CLASSES,
        400,
        16,
        TRANSFER,
        fast_forward=fast_forward,
        record_steps=True,
        **extra,  # type: ignore[arg-type]
    )
    simulator.response_latency_s = response_latency_s
    result = simulator.run(load)
    assert all(n == 0 for n in result.kv_blocks_in_use.values())
    return result


def test_step_factors_repeat_for_a_seed_and_have_the_asked_spread() -> None:
    noise = StepNoise(cv=0.2, seed=7)
    a, b = noise.for_instance("mixed-0"), noise.for_instance("mixed-0")
    other = noise.for_instance("mixed-1")
    assert a is not None and b is not None and other is not None
    factors = [a.factor(k) for k in range(20000)]
    assert factors == [b.factor(k) for k in range(20000)]
    assert factors != [other.factor(k) for k in range(20000)]
    assert b.factor(5) == factors[5]  # by index, whatever order they are asked in
    mean = statistics.fmean(factors)
    assert mean == pytest.approx(1.0, abs=0.01)
    assert statistics.pstdev(factors) / mean == pytest.approx(0.2, rel=0.05)
    biased = StepNoise(bias=0.3).for_instance("x")
    assert biased is not None and biased.charge(3, 2.0) == pytest.approx(2.6)
    assert StepNoise().for_instance("x") is None  # exact steps draw nothing


@pytest.mark.parametrize(("cv", "bias"), [(-0.1, 0.0), (float("nan"), 0.0), (0.1, -1.0)])
def test_bad_noise_is_refused(cv: float, bias: float) -> None:
    with pytest.raises(ValueError, match="invalid"):
        SimSetup(step_noise_cv=cv, profile_error=bias)


def test_noisy_runs_repeat_for_a_seed_and_differ_across_seeds() -> None:
    load = workload(80, rate_rps=30.0)
    first = _run(StepNoise(cv=0.3, seed=1), load)
    again = _run(StepNoise(cv=0.3, seed=1), load)
    other = _run(StepNoise(cv=0.3, seed=2), load)
    exact = _run(None, load)
    assert first.summary() == again.summary() and first.step_logs == again.step_logs
    assert first.duration_s != other.duration_s
    assert first.step_logs != exact.step_logs


def test_zero_noise_is_todays_simulator_exactly() -> None:
    load = workload(80, rate_rps=30.0)
    exact = _run(None, load)
    for noise in (StepNoise(), StepNoise(cv=0.0, bias=0.0, seed=9)):
        run = _run(noise, load)
        assert run.summary() == exact.summary() and run.step_logs == exact.step_logs
        assert run.records == exact.records


@pytest.mark.parametrize(
    "deployment", [Deployment(num_mixed=2), Deployment(num_prefill=1, num_decode=1)]
)
def test_fast_forward_charges_noisy_steps_as_stepping_one_by_one(deployment: Deployment) -> None:
    load = workload(60, rate_rps=20.0)
    noise = StepNoise(cv=0.4, bias=0.1, seed=3, decode_cv=0.2, decode_bias=0.5)
    fast = _run(noise, load, deployment=deployment)
    slow = _run(noise, load, deployment=deployment, fast_forward=False)
    assert fast.num_fast_forward_steps > 0
    assert fast.records == slow.records and fast.step_logs == slow.step_logs


def test_decode_only_steps_take_their_own_factor_from_the_same_draws() -> None:
    both = StepNoise(cv=0.3, bias=0.1, seed=4, decode_cv=0.3, decode_bias=0.6)
    same = StepNoise(cv=0.3, bias=0.1, seed=4)
    a, b = both.for_instance("i"), same.for_instance("i")
    assert a is not None and b is not None
    for k in range(50):
        assert a.factor(k) == b.factor(k)  # steps with prefill: as without the override
        assert a.factor(k, decode_only=True) == pytest.approx(b.factor(k) * 1.6 / 1.1)
    only_decode = StepNoise(decode_bias=1.0).for_instance("i")  # not exact: decodes are off
    assert only_decode is not None
    decode_step = StepFeatures(num_decodes=3, decode_ctx_tokens=300)
    assert only_decode.charge(0, 2.0) == 2.0 and only_decode.charge(0, 2.0, decode_step) == 4.0
    with pytest.raises(ValueError, match="invalid"):
        SimSetup(decode_step_noise_cv=-1.0)


def test_a_decode_bias_stretches_only_the_decode_only_steps() -> None:
    alone = [RequestSpec("r0", 0.0, 300, 40, "batch")]  # one prefill step, then decodes
    exact = _run(None, alone, policy="fcfs").records[0]
    slow = _run(StepNoise(decode_bias=1.0), alone, policy="fcfs").records[0]
    assert exact.ttft_s is not None and exact.e2e_s is not None and slow.e2e_s is not None
    assert slow.ttft_s == pytest.approx(exact.ttft_s, rel=1e-12)
    assert slow.e2e_s - slow.ttft_s == pytest.approx(2 * (exact.e2e_s - exact.ttft_s), rel=1e-9)


def test_a_profile_bias_stretches_every_step_by_its_factor() -> None:
    alone = [RequestSpec("r0", 0.0, 300, 40, "batch")]  # one request: no decision depends on time
    exact = _run(None, alone, policy="fcfs").records[0]
    slow = _run(StepNoise(bias=0.5), alone, policy="fcfs").records[0]
    assert exact.e2e_s is not None and exact.ttft_s is not None
    assert slow.e2e_s == pytest.approx(1.5 * exact.e2e_s, rel=1e-12)
    assert slow.ttft_s == pytest.approx(1.5 * exact.ttft_s, rel=1e-12)


def test_a_response_latency_delays_what_the_client_sees_and_no_decision() -> None:
    load = workload(60, rate_rps=20.0)
    noise = StepNoise(cv=0.3, seed=2)
    engine_side = _run(noise, load)
    client_side = _run(noise, load, response_latency_s=0.025)
    assert client_side.step_logs == engine_side.step_logs  # the same steps, at the same times
    pairs = zip(engine_side.records, client_side.records, strict=True)
    for engine, client in pairs:
        assert client.request_id == engine.request_id and client.status == engine.status
        if engine.ttft_s is not None and client.ttft_s is not None:
            assert client.ttft_s == pytest.approx(engine.ttft_s + 0.025, abs=1e-12)
            assert client.tpot_s == pytest.approx(engine.tpot_s, abs=1e-12)
        if engine.max_token_lateness_s is not None:
            assert client.max_token_lateness_s == pytest.approx(
                engine.max_token_lateness_s + 0.025, abs=1e-12
            )
    with pytest.raises(ValueError, match="response latency"):
        SimSetup(response_latency_s=-0.1)


def test_steps_may_follow_a_true_model_while_the_schedulers_plan_with_theirs() -> None:
    truth = ProfiledCostModel((2e-3, 1e-5, 0.0, 1e-3, 0.0))
    times = StepNoise(truth=truth).for_instance("i")  # no noise, but not the prediction
    assert times is not None
    step = StepFeatures(num_decodes=4, decode_ctx_tokens=400)
    assert times.charge(0, 1.0, step) == pytest.approx(truth.predict(step))
    load = workload(60, rate_rps=20.0)
    noise = StepNoise(cv=0.2, seed=5, truth=truth)
    fast = _run(noise, load)
    slow = _run(noise, load, fast_forward=False)
    assert fast.num_fast_forward_steps > 0
    assert fast.records == slow.records and fast.step_logs == slow.step_logs
    assert fast.records != _run(StepNoise(cv=0.2, seed=5), load).records
