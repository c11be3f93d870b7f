"""The `hyperflexis` dispatcher on hand-built snapshots (10,000 prefill tokens/s everywhere)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperflexis.cluster import HyperFlexisDispatcher, make_dispatcher
from hyperflexis.cluster.dispatch_split import place, split_jobs
from hyperflexis.scheduler.feasibility import PrefillJob
from tests.cluster.helpers import CONFIG, PREFILL_TOKENS_PER_S, LinearCost, req, snap


def dispatcher(admission_control: bool = False, **kwargs: object) -> HyperFlexisDispatcher:
    return HyperFlexisDispatcher(LinearCost(), CONFIG, admission_control, **kwargs)  # type: ignore[arg-type]


def test_registered_and_built_by_name() -> None:
    d = make_dispatcher("hyperflexis", LinearCost(), CONFIG, admission_control=True)
    assert isinstance(d, HyperFlexisDispatcher)
    assert d.admission_control


def test_prefers_the_instance_where_the_request_is_feasible() -> None:
    # "a" owes 0.7 s of more important work due at 0.8 s: a 0.5 s prompt due at 1 s misses there.
    busy = snap("a", [(0.8, 0, 7000)])
    idle = snap("b", [(5.0, 1, 1000)])
    decision = dispatcher().choose(req(num_prompt_tokens=5000), [busy, idle], now=0.0)
    assert decision.instance_id == "b"
    assert decision.reason == "feasible"
    assert decision.predicted_ttft_s == pytest.approx(0.5)  # EDF: before b's later job


def test_most_slack_wins_then_free_kv_then_id() -> None:
    tight = snap("a", [(0.35, 1, 3000)])  # slack 0.05 s before the new request
    roomy = snap("b", [(5.0, 1, 3000)])
    assert dispatcher().choose(req(), [tight, roomy], 0.0).instance_id == "b"
    # Equal slack: more free KV, then the smaller id.
    more_kv = snap("z", num_free_blocks=90_000)
    less_kv = snap("y", num_free_blocks=80_000)
    assert dispatcher().choose(req(), [less_kv, more_kv], 0.0).instance_id == "z"
    assert dispatcher().choose(req(), [snap("y"), snap("x")], 0.0).instance_id == "x"


def test_never_picks_a_draining_or_decode_instance() -> None:
    loaded = snap("a", [(1.0, 0, 9500)])  # the request would finish at 1.05 s, due at 1 s
    empty_draining = snap("b", draining=True)
    decode = snap("c", role="decode")
    decision = dispatcher().choose(req(), [loaded, empty_draining, decode], 0.0)
    assert decision.instance_id == "a"
    assert decision.reason == "least-predicted-ttft"
    assert decision.predicted_ttft_s == pytest.approx(1.05)
    none = dispatcher().choose(req(), [empty_draining, decode], 0.0)
    assert none.instance_id is None and none.reason == "no-instance"


def test_interactive_request_goes_where_it_displaces_only_batch_work() -> None:
    # Both instances owe 0.8 s due at 1 s; an interactive 0.3 s prompt due at 0.5 s fits
    # only by pushing that job late: batch on "b", standard on "a".
    standard = snap("a", [(1.0, 1, 8000)])
    batch = snap("b", [(1.0, 2, 8000)])
    interactive = req(num_prompt_tokens=3000, ttft_s=0.5, priority=0)
    decision = dispatcher(admission_control=True).choose(interactive, [standard, batch], 0.0)
    assert decision.instance_id == "b"
    assert decision.reason == "displaces-less-important"
    assert decision.predicted_ttft_s == pytest.approx(0.3)


def test_does_not_displace_equally_important_work() -> None:
    # A standard request that fits only by pushing another standard request late is not sent
    # there under admission control.
    standard = snap("a", [(1.0, 1, 8000)])
    newcomer = req(num_prompt_tokens=3000, ttft_s=0.5, priority=1)
    decision = dispatcher(admission_control=True).choose(newcomer, [standard], 0.0)
    assert decision.instance_id is None
    assert decision.reason == "infeasible"


def test_rejects_with_admission_control_when_nowhere_is_feasible() -> None:
    snapshots = [snap("a", [(0.55, 0, 5000)]), snap("b", [(0.65, 0, 6000)])]
    request = req(num_prompt_tokens=2000, ttft_s=0.6, priority=1)
    rejected = dispatcher(admission_control=True).choose(request, snapshots, 0.0)
    assert rejected.instance_id is None and rejected.reason == "infeasible"
    # Without admission control, or for a class that asks to be served late: the smallest
    # predicted TTFT (late, after the feasible work).
    best_effort = req(num_prompt_tokens=2000, ttft_s=0.6, priority=1, late="serve")
    for served in (
        dispatcher().choose(request, snapshots, 0.0),
        dispatcher(admission_control=True).choose(best_effort, snapshots, 0.0),
    ):
        assert served.instance_id == "a"
        assert served.reason == "least-predicted-ttft"
        assert served.predicted_ttft_s == pytest.approx(0.7)


def test_a_burst_of_identical_requests_spreads_over_instances() -> None:
    d = dispatcher()
    snapshots = [snap(f"i{k}") for k in range(4)]
    chosen = [d.choose(req(f"r{n}", 2000), snapshots, now=0.01).instance_id for n in range(8)]
    assert Counter(chosen) == {"i0": 2, "i1": 2, "i2": 2, "i3": 2}
    # Newer snapshots include what was sent: the in-flight record is dropped, and the next
    # request again sees four empty instances.
    fresh = [snap(f"i{k}", time_s=0.02) for k in range(4)]
    assert d.choose(req("next", 2000), fresh, now=0.03).instance_id == "i0"


def test_in_flight_requests_count_until_a_newer_snapshot() -> None:
    d = dispatcher(admission_control=True)
    only = [snap("a", time_s=1.0)]
    # Five 0.2 s prompts due 1.05 s after arrival fit; the sixth would make one of them late.
    for n in range(5):
        request = req(f"r{n}", 2000, ttft_s=1.05, arrival_s=1.0)
        assert d.choose(request, only, 1.0).instance_id == "a"
    assert d.choose(req("r5", 2000, ttft_s=1.05, arrival_s=1.0), only, 1.0).instance_id is None


def test_decode_must_fit_the_tpot_gap_bound() -> None:
    # 60 decodes + 1 take 61 ms > 1.5 * 40 ms on "a"; 10 decodes fit on "b".
    crowded = snap("a", decode_ctx=[100] * 60, tightest_tpot_s=0.04)
    light = snap("b", [(1.0, 1, 4000)], decode_ctx=[100] * 10, tightest_tpot_s=0.04)
    decision = dispatcher().choose(req(tpot_s=0.1), [crowded, light], 0.0)
    assert decision.instance_id == "b" and decision.reason == "feasible"
    # The request's own TPOT tightens the bound too: 11 decodes at 11 ms > 1.5 * 5 ms.
    strict = dispatcher(admission_control=True).choose(req(tpot_s=0.005), [light], 0.0)
    assert strict.instance_id is None


def test_kv_must_have_room_for_this_prompt_after_those_served_before_it() -> None:
    # "a" has 100 free blocks of 16 tokens; its pending 1000-token prompt takes 63 of them.
    # Due before the new request, it gets its KV first and leaves too little.
    full = snap("a", [(0.2, 1, 1000)], num_free_blocks=100)
    roomy = snap("b", [(0.35, 1, 3000)], num_free_blocks=1000)
    request = req(num_prompt_tokens=1000)
    assert dispatcher().choose(request, [full, roomy], 0.0).instance_id == "b"
    # Due after it, it waits for KV instead (the scheduler skips what cannot get KV), and
    # "a", with more slack, wins.
    later = snap("a", [(5.0, 1, 1000)], num_free_blocks=100)
    assert dispatcher().choose(request, [later, roomy], 0.0).instance_id == "a"


def test_kv_transfer_time_counts_on_prefill_instances() -> None:
    prefill = [snap("p", role="prefill")]
    slow_link = dispatcher(admission_control=True, kv_transfer_s=lambda n: 0.45)
    assert slow_link.choose(req(ttft_s=0.5), prefill, 0.0).instance_id is None
    fast_link = dispatcher(admission_control=True, kv_transfer_s=lambda n: n * 1e-5)
    decision = fast_link.choose(req(ttft_s=0.5), prefill, 0.0)
    assert decision.instance_id == "p"
    assert decision.predicted_ttft_s == pytest.approx(0.1 + 0.01)


def test_a_stale_idle_snapshot_gives_no_head_start() -> None:
    # Taken at t=0 with nothing pending; at t=100 the request cannot start before t=100.
    decision = dispatcher().choose(req(arrival_s=100.0), [snap("a")], now=100.0)
    assert decision.predicted_ttft_s == pytest.approx(1000 / PREFILL_TOKENS_PER_S)


def test_a_busy_snapshot_is_projected_forward() -> None:
    # 2 s of work due at t=2.2 pending at t=0; at t=1 half of it is done, so a request arriving
    # then and due after it (t=2.5) completes at 2.0 + 0.1: feasible.
    busy = snap("a", [(2.2, 1, 20_000)])
    request = req(ttft_s=1.5, arrival_s=1.0)
    decision = dispatcher(admission_control=True).choose(request, [busy], now=1.0)
    assert decision.reason == "feasible"
    assert decision.predicted_ttft_s == pytest.approx(2.1 - 1.0)
    # A request due before it goes first, but cannot start before it arrives.
    urgent = dispatcher().choose(req(ttft_s=0.5, arrival_s=1.0), [busy], now=1.0)
    assert urgent.reason == "feasible"
    assert urgent.predicted_ttft_s == pytest.approx(0.1)


jobs_strategy = st.lists(
    st.tuples(st.floats(0.05, 3.0), st.integers(0, 2), st.integers(1, 8000), st.integers(0, 0)),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    jobs_strategy,
    st.floats(0.05, 3.0),
    st.integers(0, 2),
    st.integers(1, 8000),
)
def test_fast_path_agrees_with_split_feasible(
    raw_jobs: list[tuple[float, int, int, int]], deadline_s: float, priority: int, work: int
) -> None:
    """The O(log n) path for a request that displaces nobody must answer what rerunning the
    feasibility check answers."""
    jobs: list[PrefillJob] = [(d, p, w, i) for i, (d, p, w, _) in enumerate(raw_jobs)]
    rate = PREFILL_TOKENS_PER_S
    split = split_jobs(jobs, 0.0, rate)
    fast = place(split, 0.0, deadline_s, priority, work)
    split.has_displaced = True  # forces the full rerun
    slow = place(split, 0.0, deadline_s, priority, work)
    assert fast.tier == slow.tier
    assert fast.displaced_priority == slow.displaced_priority
    assert fast.displaced_work_tokens == slow.displaced_work_tokens
    assert fast.work_ahead_tokens == slow.work_ahead_tokens
    assert fast.completion_s == pytest.approx(slow.completion_s, abs=1e-9)
    if math.isfinite(slow.slack_s):
        assert fast.slack_s == pytest.approx(slow.slack_s, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(100, 4000), st.sampled_from([0.5, 2.0, 10.0])), max_size=30),
    st.integers(0, 2**31),
)
def test_updating_in_place_after_a_choice_matches_rebuilding(
    burst: list[tuple[int, float]], seed: int
) -> None:
    """Summaries updated in place as requests go out decide exactly as ones rebuilt from the
    snapshot and the in-flight list."""
    import random

    rng = random.Random(seed)
    snapshots = [
        snap(f"i{k}", [(rng.uniform(0.2, 5.0), rng.randint(0, 2), rng.randint(100, 3000))])
        for k in range(3)
    ]
    incremental, rebuilt = dispatcher(), dispatcher()
    for n, (work, ttft_s) in enumerate(burst):
        request = req(f"r{n}", work, ttft_s=ttft_s, priority=int(ttft_s > 1) + int(ttft_s > 5))
        rebuilt._loads.clear()
        a = incremental.choose(request, snapshots, 0.05)
        b = rebuilt.choose(request, snapshots, 0.05)
        assert a.instance_id == b.instance_id and a.reason == b.reason
        assert a.predicted_ttft_s == pytest.approx(b.predicted_ttft_s)


def test_a_waiting_tight_tpot_request_slows_the_predicted_prefill_rate() -> None:
    # 10 decodes take 10 ms a step. With TPOTs of 0.1 s the step may last 150 ms (9,333
    # prefill tokens/s); a waiting request with a 10 ms TPOT caps it at 15 ms (3,333 tokens/s),
    # as the instance's own scheduler will. 3,500 tokens then take 1.05 s: too slow for 1 s.
    request = req(num_prompt_tokens=3500, ttft_s=1.0)
    loose = snap("a", [(5.0, 2, 100, 0.1)], decode_ctx=[10] * 10)
    tight = snap("a", [(5.0, 2, 100, 0.01)], decode_ctx=[10] * 10)
    assert dispatcher(admission_control=True).choose(request, [loose], 0.0).reason == "feasible"
    assert dispatcher(admission_control=True).choose(request, [tight], 0.0).instance_id is None
