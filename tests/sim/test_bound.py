"""The fluid bound on goodput@90 (`sim.bound`): its arithmetic on a linear model, and on a small
steady-state case no policy keeps 90% attainment at the bound's rate."""

from __future__ import annotations

import math

import pytest

from hyperflexis.bench.metrics import goodput_at
from hyperflexis.core import SLOClasses
from hyperflexis.perf import make_cost_model
from hyperflexis.scheduler import policy_names
from hyperflexis.sim import Deployment, SimSetup, simulate
from hyperflexis.sim.bound import goodput_bound, request_costs, steady_goodput_bound
from hyperflexis.workloads import (
    RequestSpec,
    make_lengths,
    make_workload,
    parse_slo_mix,
    poisson,
    steady_workload,
)

CLASSES = SLOClasses()
MIX = parse_slo_mix("interactive:3,standard:5,batch:2", CLASSES)
# 70B on 4 H100s (one instance) serves ~15 req/s, so a steady minute is ~900 requests.
MODEL = "llama-3.1-70b"


def test_a_linear_model_prices_prefill_beyond_the_empty_step_and_decode_at_the_largest_batch() -> (
    None
):
    # 10 ms a step, 0.1 ms a prompt token, 1 ms a decode: a 'batch' decode (300 ms TPOT) fits
    # 290 decodes, so a token costs 10/290 + 1 ms; 'interactive' (40 ms) fits 30.
    model = make_cost_model("fixed", coefficients=(0.01, 1e-4, 0.0, 1e-3, 0.0))
    workload = make_workload(
        [RequestSpec("a", 0.0, 100, 11, "batch"), RequestSpec("b", 1.0, 50, 1, "interactive")]
    )
    prefill, decode = request_costs(model, CLASSES, workload)
    assert prefill[:, 2].tolist() == pytest.approx([0.01, 0.005])
    assert decode[:, 2].tolist() == pytest.approx([10 * (0.01 / 290 + 1e-3), 0.0])
    assert (prefill[:, :2] == 0).all() and (decode[:, :2] == 0).all()  # one resource


def test_the_bound_is_the_rate_at_which_the_cheapest_share_fills_each_pool() -> None:
    workload = make_workload(
        RequestSpec(f"r{i}", float(i), 500 * (i + 1), 50, "standard") for i in range(10)
    )
    mixed = goodput_bound(SimSetup(deployment=Deployment(num_mixed=2)), CLASSES, workload)
    one = goodput_bound(SimSetup(deployment=Deployment(num_mixed=1)), CLASSES, workload)
    assert mixed.rate_rps == pytest.approx(2 * one.rate_rps)
    # The cheapest 9 of 10 leave out the longest prompt: dearer per request with it in.
    everything = goodput_bound(
        SimSetup(deployment=Deployment(num_mixed=1)), CLASSES, workload, target=1.0
    )
    assert everything.rate_rps < one.rate_rps
    pd = goodput_bound(
        SimSetup(deployment=Deployment(num_prefill=1, num_decode=1)), CLASSES, workload
    )
    assert set(pd.pool_rates_rps) == {"prefill", "decode"}
    assert pd.rate_rps == min(pd.pool_rates_rps.values())


def _steady(rate: float) -> tuple[RequestSpec, ...]:
    return steady_workload(
        seed=5,
        slo_mix=MIX,
        rate_rps=rate,
        duration_s=60.0,
        arrival=poisson(1.0),
        prompt_lens=make_lengths("lognormal", mean=1150, sigma=0.8, max_len=8192),
        output_lens=make_lengths("lognormal", mean=210, sigma=0.8, max_len=2048),
    )


@pytest.mark.parametrize(
    "deployment",
    [Deployment(num_mixed=1), Deployment(num_prefill=1, num_decode=1)],
    ids=["mixed", "pd"],
)
def test_no_policy_exceeds_the_bound_at_steady_state(deployment: Deployment) -> None:
    setup = SimSetup(deployment=deployment, model=MODEL)
    bound = steady_goodput_bound(setup, CLASSES, _steady, start_rate_rps=10.0).rate_rps
    assert math.isfinite(bound) and bound > 0
    rates = (0.6 * bound, bound)
    goodput = {}
    for policy in policy_names():
        policy_setup = SimSetup(deployment=deployment, model=MODEL, policy=policy)
        points = [(r, simulate(policy_setup, CLASSES, _steady(r))["attainment"]) for r in rates]
        goodput[policy] = goodput_at(points)
        assert goodput[policy] < bound, (policy, points)
    assert goodput["hyperflexis"] >= 0.6 * bound  # the bound is within reach, not far above it
