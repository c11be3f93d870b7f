"""The trend fit, the demand observer, and per-instance capacity from the latency model."""

from __future__ import annotations

import itertools
import math

import pytest

from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.cluster.scaler import (
    CapacityModel,
    DemandObserver,
    fit_trend,
    late_work_tokens,
    queue_laxity_s,
)
from hyperflexis.cluster.snapshot import PendingPrefill
from hyperflexis.perf import StepFeatures, make_cost_model
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.feasibility import budgeted_prefill_rate
from hyperflexis.scheduler.step_budget import mean_step_s
from tests.cluster.scaler.helpers import INTERACTIVE, STANDARD, Finished, snapshot


def test_trend_is_exact_on_a_line_and_flat_with_few_bins() -> None:
    rates = [10.0 + 2.0 * 5.0 * i for i in range(12)]  # +2/s, bins of 5 s
    trend = fit_trend(rates, 5.0)
    assert trend.slope == pytest.approx(2.0)
    assert trend.level == pytest.approx(rates[-1] + 2.0 * 2.5)  # the last bin's centre + half
    assert trend.at(10.0) == pytest.approx(trend.level + 20.0)
    assert trend.ahead(10.0) == trend.at(10.0)
    falling = fit_trend(rates[::-1], 5.0)
    assert falling.ahead(10.0) == pytest.approx(falling.mean)  # never below the window mean
    assert falling.at(1e6) == 0.0
    few = fit_trend([10.0, 30.0, 20.0], 5.0)
    assert few.slope == 0.0 and few.level == pytest.approx(20.0) and few.peak == 30.0
    assert fit_trend([], 5.0).level == 0.0


def test_trend_keeps_only_a_significant_slope() -> None:
    # Four noisy bins that happen to rise (seed 1 of the shift's first 20 s): with 2 degrees of
    # freedom the slope is not significant, so the line is flat at the mean.
    noisy = [76594.0, 73372.0, 82218.0, 84873.0]
    trend = fit_trend(noisy, 5.0)
    assert trend.slope == 0.0 and trend.level == pytest.approx(sum(noisy) / 4)
    # The same rise, steady over twelve bins with a little noise, is a trend.
    rising = [70000.0 + 500.0 * 5.0 * i + (300.0 if i % 2 else -300.0) for i in range(12)]
    assert fit_trend(rising, 5.0).slope == pytest.approx(500.0, rel=0.05)


def _request(k: int, prompt: int, max_tokens: int, slo=STANDARD) -> DispatchRequest:  # type: ignore[no-untyped-def]
    return DispatchRequest(f"r{k}", prompt, max_tokens, slo, 0.0)


def test_observer_rates_classes_attainment_and_window() -> None:
    observer = DemandObserver(window_s=60.0, bin_s=5.0)
    observer.observe_snapshots(0.0, [])  # the driver's first report starts the window
    # 2 req/s for 60 s: 1000-token prompts, standard; plus interactive ones at 1 req/s.
    for k in range(120):
        t = 0.25 + k * 0.5
        observer.observe_arrival(t, _request(k, 1000, 300))
        if k % 2 == 0:
            observer.observe_arrival(t, _request(k + 1000, 200, 50, INTERACTIVE))
            observer.observe_finish(t, Finished("interactive", 40, attained=k % 4 == 0))
    obs = observer.observe(60.0)
    assert obs.covered_s == 60.0
    assert obs.arrival_rate_by_class == pytest.approx({"interactive": 1.0, "standard": 2.0})
    assert obs.prefill_tokens.level == pytest.approx(2200.0)
    # Interactive output lengths come from finishes (40), standard ones from max_tokens.
    assert obs.decode_tokens.mean == pytest.approx(2 * 300 + 1 * 40)
    assert obs.tightest_tpot_s == INTERACTIVE.tpot_s
    assert obs.attainment == pytest.approx(0.5)
    assert obs.mean_decode_context_tokens == pytest.approx(obs.mean_prompt_tokens + 640 / 3 / 2)
    # A minute later, with nothing new, the window is empty.
    later = observer.observe(121.0)
    assert later.prefill_tokens.level == 0.0 and later.attainment is None


def test_observer_snapshots_kv_usage_and_queue_laxity() -> None:
    observer = DemandObserver()
    pending = (PendingPrefill(deadline_s=2.0, priority=1, work_tokens=10_000),)
    observer.observe_snapshots(
        0.0,
        [
            snapshot("p0", "prefill", kv_usage=0.5, num_waiting=3, pending=pending),
            snapshot("p1", "prefill", kv_usage=0.1),
            snapshot("d0", "decode", kv_usage=0.9),
        ],
    )
    obs = observer.observe(1.0)
    assert obs.kv_usage("prefill") == pytest.approx(0.3)
    assert obs.kv_usage("mixed") is None
    assert obs.num_waiting("prefill") == 3
    p0 = obs.snapshots_by_role["prefill"][0]
    assert queue_laxity_s(p0, 1.0, 20_000.0) == pytest.approx(0.5)
    assert queue_laxity_s(p0, 1.0, 5_000.0) == pytest.approx(-1.0)
    assert queue_laxity_s(obs.snapshots_by_role["decode"][0], 1.0, 5_000.0) is None
    assert late_work_tokens(p0, 1.0, 20_000.0) == 0
    assert late_work_tokens(p0, 1.0, 5_000.0) == 10_000
    observer.forget(["p1"])
    assert set(observer.observe(2.0).snapshots_by_role) == {"prefill"}


def _capacity_model(**config: object) -> CapacityModel:
    cost = make_cost_model("analytic", hardware="h100", model="llama-3.1-8b")
    return CapacityModel(cost, SchedulerConfig(**config), kv_cache_tokens=400_000)  # type: ignore[arg-type]


def test_decode_batch_is_the_largest_that_fits_the_tpot() -> None:
    model = _capacity_model(max_num_seqs=4096, max_num_batched_tokens=8192)
    cost = model.cost_model
    for tpot in (0.02, 0.04, 0.1):
        batch = model.largest_decode_batch(tpot, 1000.0, 4096)
        fits = StepFeatures(num_decodes=batch, decode_ctx_tokens=batch * 1000)
        over = StepFeatures(num_decodes=batch + 1, decode_ctx_tokens=(batch + 1) * 1000)
        assert cost.predict(fits) <= tpot < cost.predict(over)
    assert model.largest_decode_batch(0.001, 1000.0, 4096) == 0  # not even one fits


def test_capacity_by_role_and_limits() -> None:
    model = _capacity_model()
    prefill = model.capacity("prefill", 1000, 1100, 0.1)
    assert prefill.decode_tokens_s == 0
    assert 20_000 < prefill.prefill_tokens_s < 50_000  # 8B on an H100: tens of k tokens/s
    decode = model.capacity("decode", 1000, 1100, 0.1)
    assert decode.prefill_tokens_s == 0 and decode.max_decode_batch == 256  # max_num_seqs
    # Long contexts: the KV cache (400k tokens) bounds the batch before the TPOT does.
    long = model.capacity("decode", 8000, 8000, 0.1)
    assert long.max_decode_batch == 400_000 // 8001
    tight = model.capacity("mixed", 1000, 1100, 0.04)
    assert tight.utilisation(tight.prefill_tokens_s / 2, tight.decode_tokens_s / 2) == (
        pytest.approx(1.0)
    )
    assert math.isinf(prefill.utilisation(0.0, 1.0))  # a prefill instance cannot decode
    assert "batch 256" in decode.describe()


def test_prefill_capacity_is_the_rate_the_scheduler_plans() -> None:
    # One rule: the scaler sizes pools, and counts late work, at the scheduler's own budgeted
    # rate (both margins), not at the instance's raw rate, which is 1 / (1 - margin) faster.
    model = _capacity_model()
    cost = model.cost_model
    for role, tpot in (("prefill", 0.1), ("mixed", 0.04), ("mixed", None)):
        config = SchedulerConfig(role=role)  # type: ignore[arg-type]
        planned = budgeted_prefill_rate(cost, StepFeatures(), tpot or math.inf, config)
        assert model.capacity(role, 1000, 1100, tpot).prefill_tokens_s == planned  # type: ignore[arg-type]
    raw = _capacity_model(prefill_rate_margin=0.0, tpot_margin=0.0)
    mixed, raw_mixed = (
        model.capacity("mixed", 1000, 1100, 0.04),
        raw.capacity("mixed", 1000, 1100, 0.04),
    )
    assert raw_mixed.prefill_tokens_s > mixed.prefill_tokens_s / (1 - 0.2) * 0.999
    # The joint mixed load plans prefill at that rate too: more instances for the same demand.
    assert model.load_instances(mixed, 30_000.0, 6_000.0) > 1.05 * raw.load_instances(
        raw_mixed, 30_000.0, 6_000.0
    )


def test_decode_capacity_steps_at_the_mean_step_the_scheduler_plans() -> None:
    # Decodes' deadlines are planned `tpot_margin` early, so their steps average one TPOT less
    # the margin: the scaler's decode batch must fit that step, not the whole TPOT.
    # Short contexts and loose limits: the step binds, not the KV cache or the batch limits.
    limits = {"max_num_seqs": 4096, "max_num_batched_tokens": 8192}
    model, raw = _capacity_model(**limits), _capacity_model(tpot_margin=0.0, **limits)
    planned = model.capacity("decode", 100, 100, 0.04)
    whole = raw.capacity("decode", 100, 100, 0.04)
    assert planned.decode_step_s <= mean_step_s(0.04, model.scheduler_config) < whole.decode_step_s
    assert planned.decode_tokens_s < whole.decode_tokens_s


def test_mixed_load_shares_steps_between_decodes_and_prefill() -> None:
    model = _capacity_model()
    mixed = model.capacity("mixed", 1000, 1100, 0.1)
    prefill_s, decode_s = 30_000.0, 6_000.0  # 30 req/s of 1000 in, 200 out
    summed = mixed.utilisation(prefill_s, decode_s)
    joint = model.load_instances(mixed, prefill_s, decode_s)
    # Decodes and prefill chunks share each step's weight reads: fewer instances than the sum
    # of the two single-resource fractions, more than either alone.
    alone = max(mixed.utilisation(prefill_s, 0.0), mixed.utilisation(0.0, decode_s))
    assert alone < joint < 0.9 * summed
    # A pure load needs what the single-resource model says, and a nearly pure one (through
    # the joint search: too few tokens of the other kind to fill one per step) nearly that.
    assert model.load_instances(mixed, prefill_s, 0.0) == mixed.utilisation(prefill_s, 0.0)
    assert model.load_instances(mixed, 0.0, decode_s) == mixed.utilisation(0.0, decode_s)
    assert model.load_instances(mixed, prefill_s, 1e-6) == pytest.approx(
        mixed.utilisation(prefill_s, 0.0), rel=1e-6
    )
    assert model.load_instances(mixed, 1e-6, decode_s) == pytest.approx(
        mixed.utilisation(0.0, decode_s), rel=1e-6
    )
    # Linear in the demand, so headroom scales it; monotone in each kind of demand.
    assert model.load_instances(mixed, 2 * prefill_s, 2 * decode_s) == pytest.approx(2 * joint)
    loads = [
        [model.load_instances(mixed, p, d) for d in (0.0, 2_000.0, 6_000.0, 20_000.0)]
        for p in (0.0, 5_000.0, 30_000.0, 90_000.0)
    ]
    for line in [*loads, *zip(*loads, strict=True)]:  # up to integer rounding of a step
        assert all(b >= a * (1 - 1e-3) for a, b in itertools.pairwise(line)), line
        assert line[-1] > line[0]
    # Other roles keep the single-resource answer; a budget nothing fits in is infinite load.
    decode = model.capacity("decode", 1000, 1100, 0.1)
    assert model.load_instances(decode, 0.0, decode_s) == decode.utilisation(0.0, decode_s)
    assert math.isinf(model.load_instances(decode, prefill_s, decode_s))
    hopeless = model.capacity("mixed", 1000, 1100, 0.001)
    assert math.isinf(model.load_instances(hopeless, prefill_s, decode_s))


def test_mixed_load_respects_the_kv_cache_and_step_token_limits() -> None:
    # Long decodes: the KV cache caps the decodes one step carries, so a decode-heavy mixed
    # load needs at least the decode instances that cap implies.
    model = _capacity_model()
    mixed = model.capacity("mixed", 8000, 8000, 0.1)
    decode_s = 20_000.0
    joint = model.load_instances(mixed, 1_000.0, decode_s)
    assert mixed.max_decode_batch == 400_000 // 8001
    assert joint >= mixed.utilisation(0.0, decode_s)
    # A small step token budget bounds a step's decodes plus prefill tokens.
    small = _capacity_model(max_num_batched_tokens=64)
    short = model.capacity("mixed", 1000, 1100, 0.1)
    capacity = small.capacity("mixed", 1000, 1100, 0.1)
    assert small.load_instances(capacity, 3_000.0, 3_000.0) > 2 * model.load_instances(
        short, 3_000.0, 3_000.0
    )


def test_late_work_sets_aside_what_misses_so_the_rest_stays_on_time() -> None:
    # At 10k tok/s from t=0, earliest deadline first: a (5k, due 1 s) makes it; b (20k, due
    # 1.1 s) cannot, and is set aside as the scheduler's late set would be; c (5k, due 1.2 s)
    # then makes it right after a, where behind b it would have missed too.
    pending = (
        PendingPrefill(deadline_s=1.0, priority=1, work_tokens=5_000),
        PendingPrefill(deadline_s=1.1, priority=1, work_tokens=20_000),
        PendingPrefill(deadline_s=1.2, priority=1, work_tokens=5_000),
    )
    queued = snapshot("m0", "mixed", pending=pending)
    assert late_work_tokens(queued, 0.0, 10_000.0) == 20_000
    assert late_work_tokens(queued, 0.0, 100_000.0) == 0
    assert late_work_tokens(queued, 0.0, 0.0) == 30_000
    assert late_work_tokens(snapshot("m1", "mixed"), 0.0, 10_000.0) == 0
