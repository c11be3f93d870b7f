"""`hyperflexis`: SLO-aware dispatch (DESIGN.md §5).

For each instance that takes new requests, rerun that instance's own feasibility check
(`split_feasible` at `budgeted_prefill_rate`) over its pending prefills, the requests sent to it
since its snapshot, and the new request; add KV transfer time on prefill instances; check that
the request's decode fits the instance's TPOT gap bound and that KV has room for its prompt.
Then, in order of preference:

1. **feasible**: the new request meets its TTFT and makes no pending request late. Take the
   instance left with the most slack where it acts: the least, over the new prefill and the
   feasible ones served after it (which it delays), of deadline minus predicted completion.
   Prefills served before it are unaffected wherever it goes, so they do not vote. Ties: the
   most free KV, then the smallest id.
2. **displaces-less-important**: the new request meets its TTFT and everything it pushes late is
   strictly less important. Take the instance whose most important displaced request is least
   important, then the least displaced work, then as above.
3. Nowhere: reject (`infeasible`) with admission control on when the request's class says
   `late: reject`, else the smallest predicted TTFT.

A finished prefill goes to the linked decode instance with the most free KV among those where
one more decode keeps the step within the TPOT gap bound; if none fits, the most free KV.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate

from hyperflexis.cluster.dispatch_baselines import in_flight_record, new_request_candidates
from hyperflexis.cluster.dispatcher import (
    DispatchDecision,
    Dispatcher,
    DispatchRequest,
    linked_decode_snapshots,
)
from hyperflexis.cluster.inflight import InFlight, InFlightRequest
from hyperflexis.cluster.registry import register_dispatcher
from hyperflexis.cluster.snapshot import LoadSnapshot, PendingPrefill
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.scheduler.config import ROLES, Role, SchedulerConfig
from hyperflexis.scheduler.feasibility import PrefillJob, budgeted_prefill_rate, split_feasible

# Seconds to move a prompt's KV from a prefill to a decode instance, by prompt length.
KVTransferTime = Callable[[int], float]

_FEASIBLE, _DISPLACES_LESS_IMPORTANT, _INFEASIBLE = 0, 1, 2


@dataclass(slots=True)
class _Split:
    """An instance's pending prefills split by `split_feasible` without the new request, with
    what lets a new request that displaces nobody be tried without rerunning the check."""

    jobs: list[PrefillJob]  # the jobs split; item = index in this list
    origin_s: float  # the time the split starts from
    feasible: list[int]  # their indices, EDF order
    keys: list[tuple[float, int]]  # (deadline, priority) of the feasible ones, EDF order
    elapsed_s: list[float]  # [i]: predicted prefill time of feasible[:i]
    work_tokens: list[int]  # [i]: prefill work of feasible[:i]
    slacks_s: list[float]  # [i]: deadline minus predicted completion of feasible[i]
    has_displaced: bool  # some job went late to make room for others (not just too late alone)


def _split(jobs: list[PrefillJob], origin_s: float, rate: float) -> _Split:
    feasible, late = split_feasible(jobs, origin_s, rate)
    # Built with accumulate and comprehensions: this runs once per snapshot per instance.
    chosen = [jobs[i] for i in feasible]
    keys = [(job[0], job[1]) for job in chosen]
    elapsed = [0.0, *accumulate([job[2] / rate for job in chosen])]
    work = [0, *accumulate([job[2] for job in chosen])]
    has_displaced = any(origin_s + jobs[i][2] / rate <= jobs[i][0] for i in late)
    split = _Split(jobs, origin_s, feasible, keys, elapsed, work, [], has_displaced)
    _update_slack(split)
    return split


def _update_slack(split: _Split) -> None:
    origin_s = split.origin_s
    # Minima over ranges are taken when asked (`min` of a slice runs in C): cheaper than
    # keeping prefix and suffix minima up to date.
    split.slacks_s = [
        key[0] - (origin_s + done_s)
        for key, done_s in zip(split.keys, split.elapsed_s[1:], strict=True)
    ]


def _insert(split: _Split, job: PrefillJob, rate: float) -> bool:
    """Add a job already appended to `split.jobs` (its item is its index) without rerunning the
    check, when it displaces nobody (see `_try`); False when it would, and nothing changed."""
    deadline_s, priority, work, index = job
    own_s = work / rate
    position = bisect_right(split.keys, (deadline_s, priority))
    start_s = split.origin_s + split.elapsed_s[position]
    if (
        split.has_displaced
        or start_s + own_s > deadline_s
        or min(split.slacks_s[position:], default=math.inf) < own_s
    ):
        return False
    split.feasible.insert(position, index)
    split.keys.insert(position, (deadline_s, priority))
    elapsed = split.elapsed_s
    split.elapsed_s = elapsed[: position + 1] + [e + own_s for e in elapsed[position:]]
    done = split.work_tokens
    split.work_tokens = done[: position + 1] + [w + work for w in done[position:]]
    _update_slack(split)
    return True


def _deadline_then_priority(pending: PendingPrefill) -> tuple[float, int]:
    return pending.deadline_s, pending.priority


@dataclass(slots=True)
class _InstanceLoad:
    """An instance's snapshot plus what was sent to it since, summarised once per change."""

    snapshot: LoadSnapshot
    version: int  # of its in-flight list
    jobs: list[PrefillJob]  # pending prefills, then in-flight ones; item = index
    snapshot_work_tokens: int  # prefill work the snapshot shows (in-flight work excluded)
    pending_blocks: int  # KV blocks their prompts still need
    decode_features: StepFeatures  # decodes now, plus the in-flight requests' first decodes
    tightest_tpot_s: float  # among decodes now, pending prefills and in-flight requests
    rates: dict[float, float] = field(default_factory=dict)  # tightest TPOT -> tokens/s
    splits: dict[float, _Split] = field(default_factory=dict)  # by rate; the latest origin


def _summarise(
    snapshot: LoadSnapshot, in_flight: list[InFlightRequest], version: int
) -> _InstanceLoad:
    pending = snapshot.pending_prefills
    # In split_feasible's order already, which makes its (stable) sorts cheap.
    ordered = sorted(pending, key=_deadline_then_priority)
    jobs: list[PrefillJob] = [
        (p.deadline_s, p.priority, p.work_tokens, index) for index, p in enumerate(ordered)
    ]
    block_size = snapshot.block_size
    work = sum(p.work_tokens for p in pending)
    blocks = sum(-(-p.work_tokens // block_size) for p in pending)
    features = snapshot.decode_features.copy()
    # The instance rates its prefill as if the tightest TPOT among running and waiting requests
    # were decoding (scheduler/feasibility.py); so does its dispatcher.
    tightest = min(snapshot.tightest_tpot_s, min((p.tpot_s for p in pending), default=math.inf))
    for r in in_flight:
        jobs.append((r.deadline_s, r.priority, r.num_prompt_tokens, len(jobs)))
        blocks += -(-r.num_prompt_tokens // block_size)
        features.add_decode(r.num_prompt_tokens)
        tightest = min(tightest, r.tpot_s)
    return _InstanceLoad(snapshot, version, jobs, work, blocks, features, tightest)


@dataclass(frozen=True, slots=True)
class _Option:
    """The new request at one instance."""

    instance_id: str
    tier: int  # _FEASIBLE, _DISPLACES_LESS_IMPORTANT or _INFEASIBLE
    predicted_ttft_s: float  # from arrival, KV transfer included
    slack_s: float  # least slack of the new prefill and the feasible ones it delays
    kv_free_blocks: int  # blocks left once every pending prompt has its KV (for tie-breaks)
    displaced_priority: int  # of the most important request it pushes late (tier 1)
    displaced_work_tokens: int  # prefill work it pushes late (tier 1)


def _without_snapshot(option: tuple[object, ...]) -> tuple[object, ...]:
    return option[:-1]


@register_dispatcher
class HyperFlexisDispatcher(Dispatcher):
    name = "hyperflexis"

    def __init__(
        self,
        cost_model: StepCostModel,
        scheduler_config: SchedulerConfig,
        admission_control: bool = False,
        kv_transfer_s: KVTransferTime | None = None,
    ) -> None:
        super().__init__(cost_model, scheduler_config, admission_control)
        self.kv_transfer_s = kv_transfer_s  # P/D: prefill -> decode KV move time; None: free
        self._configs: dict[Role, SchedulerConfig] = {
            role: replace(scheduler_config, role=role) for role in ROLES
        }
        self._in_flight = InFlight()  # new requests sent since each instance's snapshot
        self._in_flight_decodes = InFlight()  # finished prefills handed to decode instances
        self._loads: dict[str, _InstanceLoad] = {}

    # -- new requests -----------------------------------------------------------------------

    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        candidates = new_request_candidates(snapshots)
        if not candidates:
            return DispatchDecision(None, "no-instance")
        options = [self._evaluate(request, s, now) for s in candidates]
        best, reason = self._pick(options, request)
        if best is None:
            least = min(o.predicted_ttft_s for o in options)
            return DispatchDecision(None, "infeasible", least if math.isfinite(least) else None)
        snapshot = next(s for s in candidates if s.instance_id == best.instance_id)
        self._record(request, snapshot, now)
        return DispatchDecision(best.instance_id, reason, best.predicted_ttft_s)

    def _record(self, request: DispatchRequest, snapshot: LoadSnapshot, now: float) -> None:
        """Count the request as in flight to the instance, and update its summary in place
        (cheaper than rebuilding it: a burst between two snapshots lands on the same ones)."""
        deadline_s = request.arrival_s + request.slo.ttft_s - self._transfer_s(request, snapshot)
        record = in_flight_record(request, now, deadline_s)
        version = self._in_flight.add(snapshot, record)
        load = self._loads.get(snapshot.instance_id)
        if load is None or load.snapshot is not snapshot or load.version != version - 1:
            return  # rebuilt on next use
        load.version = version
        work = record.num_prompt_tokens
        job = (deadline_s, record.priority, work, len(load.jobs))
        load.jobs.append(job)  # shared with every split: each must take it or go
        load.pending_blocks += -(-work // snapshot.block_size)
        load.decode_features.add_decode(work)
        load.tightest_tpot_s = min(load.tightest_tpot_s, record.tpot_s)
        for rate, split in list(load.splits.items()):
            if not _insert(split, job, rate):
                del load.splits[rate]

    def _pick(self, options: list[_Option], request: DispatchRequest) -> tuple[_Option | None, str]:
        feasible = [o for o in options if o.tier == _FEASIBLE]
        if feasible:
            return min(
                feasible, key=lambda o: (-o.slack_s, -o.kv_free_blocks, o.instance_id)
            ), "feasible"
        displacing = [o for o in options if o.tier == _DISPLACES_LESS_IMPORTANT]
        if displacing:
            best = min(
                displacing,
                key=lambda o: (
                    -o.displaced_priority,
                    o.displaced_work_tokens,
                    -o.slack_s,
                    -o.kv_free_blocks,
                    o.instance_id,
                ),
            )
            return best, "displaces-less-important"
        if self.admission_control and request.slo.late == "reject":
            return None, "infeasible"  # its class asks to be told at once, not served late
        best = min(options, key=lambda o: (o.predicted_ttft_s, -o.kv_free_blocks, o.instance_id))
        return best, "least-predicted-ttft"

    def _transfer_s(self, request: DispatchRequest, snapshot: LoadSnapshot) -> float:
        if snapshot.role != "prefill" or self.kv_transfer_s is None:
            return 0.0
        return self.kv_transfer_s(request.num_prompt_tokens)

    def _load(self, snapshot: LoadSnapshot) -> _InstanceLoad:
        in_flight, version = self._in_flight.since(snapshot)
        load = self._loads.get(snapshot.instance_id)
        if load is None or load.snapshot is not snapshot or load.version != version:
            load = _summarise(snapshot, in_flight, version)
            self._loads[snapshot.instance_id] = load
        return load

    def _evaluate(self, request: DispatchRequest, snapshot: LoadSnapshot, now: float) -> _Option:
        load = self._load(snapshot)
        slo = request.slo
        config = self._configs[snapshot.role]
        tightest_s = min(load.tightest_tpot_s, slo.tpot_s)
        # The rate uses the decodes running now, as the instance's own check does.
        rate = load.rates.get(tightest_s)
        if rate is None:
            rate = budgeted_prefill_rate(
                self.cost_model, snapshot.decode_features, tightest_s, config
            )
            load.rates[tightest_s] = rate
        transfer_s = self._transfer_s(request, snapshot)
        deadline_s = request.arrival_s + slo.ttft_s - transfer_s
        work = request.num_prompt_tokens
        block_size = snapshot.block_size
        kv_free = snapshot.num_free_blocks - load.pending_blocks - (-(-work // block_size))
        if rate <= 0:
            return _Option(snapshot.instance_id, _INFEASIBLE, math.inf, -math.inf, kv_free, 0, 0)
        # Project the snapshot forward: the instance has worked through its backlog since the
        # snapshot was taken, but not past now (a stale idle snapshot is no head start). Work
        # sent since is all there by now. Cacheable while the backlog lasts: origin = time_s.
        origin_s = max(snapshot.time_s, now - load.snapshot_work_tokens / rate)
        split = load.splits.get(rate)
        if split is None or split.origin_s != origin_s:
            split = _split(load.jobs, origin_s, rate)
            load.splits[rate] = split
        tier, completion_s, slack_s, displaced_priority, displaced_work, work_ahead = self._try(
            split, origin_s, now, rate, deadline_s, slo.priority, work
        )
        # KV for its prompt once the prefills served before it (EDF) have theirs; the ones
        # after it, or late, wait for KV (the scheduler skips them rather than block).
        kv_fits = -(-(work_ahead + work) // block_size) <= snapshot.num_free_blocks
        if not (kv_fits and self._decode_fits(request, load, snapshot, tightest_s)):
            tier = _INFEASIBLE
        predicted_ttft_s = completion_s + transfer_s - request.arrival_s
        return _Option(
            snapshot.instance_id,
            tier,
            predicted_ttft_s,
            slack_s,
            kv_free,
            displaced_priority,
            displaced_work,
        )

    def _try(
        self,
        split: _Split,
        origin_s: float,
        now: float,
        rate: float,
        deadline_s: float,
        priority: int,
        work: int,
    ) -> tuple[int, float, float, int, int, int]:
        """(tier, predicted prefill completion, slack, most important displaced priority,
        displaced work, prefill work served before it) of the new request added to `split`'s
        jobs.

        The split runs from `origin_s` (the snapshot, projected); the new request arrives at
        `now` and cannot start before, which is all that differs from its EDF slot there."""
        own_s = work / rate
        if now + own_s > deadline_s:
            # Too late even alone: it would be served after the feasible work.
            done_s = max(now, origin_s + split.elapsed_s[-1]) + own_s
            return _INFEASIBLE, done_s, deadline_s - done_s, 0, 0, 0
        if not split.has_displaced:
            # Nothing was pushed late for others, so adding a job changes nothing before its
            # EDF position; if everyone after it absorbs its time, split_feasible would keep
            # them all, and answer exactly this.
            position = bisect_right(split.keys, (deadline_s, priority))
            start_s = origin_s + split.elapsed_s[position]
            slacks_s = split.slacks_s
            after_s = min(slacks_s[position:], default=math.inf)
            if start_s + own_s <= deadline_s and after_s >= own_s:
                done_s = max(start_s, now) + own_s
                least_s = min(deadline_s - done_s, after_s - own_s)
                return _FEASIBLE, done_s, least_s, 0, 0, split.work_tokens[position]
        jobs = split.jobs
        new_index = len(jobs)
        with_new = [*jobs, (deadline_s, priority, work, new_index)]
        feasible, _ = split_feasible(with_new, origin_s, rate)
        total_s = 0.0
        slack_s = math.inf
        completion_s: float | None = None
        work_done = work_ahead = 0
        for index in feasible:
            job_deadline_s, _, job_work, _ = with_new[index]
            total_s += job_work / rate
            if index == new_index:
                completion_s = max(origin_s + total_s, now + own_s)
                slack_s = deadline_s - completion_s
                work_ahead = work_done
            elif completion_s is not None:  # served after it: its time delays them
                slack_s = min(slack_s, job_deadline_s - (origin_s + total_s))
            work_done += job_work
        if completion_s is None:
            # Late: served after the feasible work, with what capacity is left.
            done_s = max(origin_s + total_s, now) + own_s
            return _INFEASIBLE, done_s, deadline_s - done_s, 0, 0, work_done
        kept = set(feasible)
        displaced = [jobs[i] for i in split.feasible if i not in kept]
        if not displaced:
            return _FEASIBLE, completion_s, slack_s, 0, 0, work_ahead
        most_important = min(job[1] for job in displaced)
        tier = _DISPLACES_LESS_IMPORTANT if most_important > priority else _INFEASIBLE
        displaced_work = sum(job[2] for job in displaced)
        return tier, completion_s, slack_s, most_important, displaced_work, work_ahead

    def _decode_fits(
        self,
        request: DispatchRequest,
        load: _InstanceLoad,
        snapshot: LoadSnapshot,
        tightest_s: float,
    ) -> bool:
        """A mixed instance must also run the request's decodes within the TPOT gap bound."""
        if snapshot.role != "mixed":
            return True
        features = load.decode_features.copy()
        features.add_decode(request.num_prompt_tokens)
        return self.cost_model.predict(features) <= self._gap_bound_s(tightest_s)

    def _gap_bound_s(self, tightest_tpot_s: float) -> float:
        config = self.scheduler_config
        return min(config.max_gap_factor * tightest_tpot_s, config.max_step_s)

    # -- finished prefills (P/D) ------------------------------------------------------------

    def choose_decode(
        self,
        request: DispatchRequest,
        prefill_instance_id: str,
        snapshots: Sequence[LoadSnapshot],
        links: Mapping[str, frozenset[str]],
        now: float,
    ) -> DispatchDecision:
        candidates = linked_decode_snapshots(prefill_instance_id, snapshots, links)
        if not candidates:
            return DispatchDecision(None, "no-linked-decode-instance")
        ctx = request.num_prompt_tokens
        fitting: list[tuple[int, float, str, LoadSnapshot]] = []
        fallback: list[tuple[int, str, LoadSnapshot]] = []
        for s in candidates:
            kv_free, headroom_s = self._decode_room(s, ctx, request.slo.tpot_s)
            fallback.append((-kv_free, s.instance_id, s))
            if kv_free >= 0 and headroom_s >= 0:
                fitting.append((-kv_free, -headroom_s, s.instance_id, s))
        if fitting:
            chosen, reason = min(fitting, key=_without_snapshot)[-1], "fits"
        else:
            chosen, reason = min(fallback, key=_without_snapshot)[-1], "most-free-kv"
        deadline_s = request.arrival_s + request.slo.ttft_s
        transfer_s = self.kv_transfer_s(ctx) if self.kv_transfer_s is not None else 0.0
        # It counts against the decode instance from when its KV lands there.
        record = in_flight_record(request, now + transfer_s, deadline_s)
        self._in_flight_decodes.add(chosen, record)
        return DispatchDecision(chosen.instance_id, reason)

    def _decode_room(self, snapshot: LoadSnapshot, ctx: int, tpot_s: float) -> tuple[int, float]:
        """(KV blocks left, seconds left under the TPOT gap bound) on a decode instance once it
        runs one more decode at context `ctx`, besides those it has, those waiting for
        admission and those handed to it since its snapshot."""
        features = snapshot.decode_features.copy()
        tightest_s = min(snapshot.tightest_tpot_s, tpot_s)
        block_size = snapshot.block_size
        blocks = -(-(ctx + 1) // block_size)
        features.add_decode(ctx)
        # Waiting for admission: their contexts are not published; take this request's as the
        # typical one.
        for p in snapshot.pending_prefills:
            features.add_decode(ctx)
            blocks += -(-(ctx + 1) // block_size)
            tightest_s = min(tightest_s, p.tpot_s)
        for r in self._in_flight_decodes.since(snapshot)[0]:
            features.add_decode(r.num_prompt_tokens)
            blocks += -(-(r.num_prompt_tokens + 1) // block_size)
            tightest_s = min(tightest_s, r.tpot_s)
        headroom_s = self._gap_bound_s(tightest_s) - self.cost_model.predict(features)
        return snapshot.num_free_blocks - blocks, headroom_s
