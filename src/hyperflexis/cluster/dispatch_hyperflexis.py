"""`hyperflexis`: SLO-aware dispatch (DESIGN.md §5).

For each instance that takes new requests, rerun that instance's own feasibility check
(`split_feasible` at `budgeted_prefill_rate`) over its pending prefills, the requests sent to it
since its snapshot, and the new request; add KV transfer time on prefill instances; check that
the request's decode fits the instance's TPOT gap bound and that KV has room for its prompt.
Then, in order of preference:

1. **feasible**: the new request meets its TTFT and makes no pending request late. Take the
   instance left with the most slack (the least, over its feasible prefills, of deadline minus
   predicted completion), then the most free KV, then the smallest id.
2. **displaces-less-important**: the new request meets its TTFT and everything it pushes late is
   strictly less important. Take the instance whose most important displaced request is least
   important, then the least displaced work, then as above.
3. Nowhere: reject (`infeasible`) with admission control on, else the smallest predicted TTFT.

A finished prefill goes to the linked decode instance with the most free KV among those where
one more decode keeps the step within the TPOT gap bound; if none fits, the most free KV.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from hyperflexis.cluster.dispatch_baselines import in_flight_record, new_request_candidates
from hyperflexis.cluster.dispatcher import DispatchDecision, Dispatcher, DispatchRequest
from hyperflexis.cluster.inflight import InFlight, InFlightRequest
from hyperflexis.cluster.registry import register_dispatcher
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.scheduler.config import ROLES, Role, SchedulerConfig
from hyperflexis.scheduler.feasibility import PrefillJob, budgeted_prefill_rate, split_feasible

# Seconds to move a prompt's KV from a prefill to a decode instance, by prompt length.
KVTransferTime = Callable[[int], float]

_FEASIBLE, _DISPLACES_LESS_IMPORTANT, _INFEASIBLE = 0, 1, 2


@dataclass(slots=True)
class _Split:
    """An instance's pending prefills split by `split_feasible` without the new request, with
    what lets a new request be tried in O(log n) when it displaces nothing."""

    jobs: list[PrefillJob]  # the jobs split; item = index in this list
    origin_s: float  # the time the split starts from
    feasible: list[int]  # their indices, EDF order
    keys: list[tuple[float, int]]  # (deadline, priority) of the feasible ones, EDF order
    elapsed_s: list[float]  # [i]: predicted prefill time of feasible[:i]
    min_slack_before: list[float]  # [i]: least slack among feasible[:i]
    min_slack_after: list[float]  # [i]: least slack among feasible[i:]
    has_displaced: bool  # some job went late to make room for others (not just too late alone)


def _split(jobs: list[PrefillJob], origin_s: float, rate: float) -> _Split:
    feasible, late = split_feasible(jobs, origin_s, rate)
    keys: list[tuple[float, int]] = []
    elapsed = [0.0]
    slack_before = [math.inf]
    total_s = 0.0
    least = math.inf
    for index in feasible:
        deadline_s, priority, work_tokens, _ = jobs[index]
        keys.append((deadline_s, priority))
        total_s += work_tokens / rate
        elapsed.append(total_s)
        slack = deadline_s - (origin_s + total_s)
        least = slack if slack < least else least
        slack_before.append(least)
    slack_after = [math.inf] * (len(feasible) + 1)
    least = math.inf
    for i in range(len(feasible) - 1, -1, -1):
        slack = keys[i][0] - (origin_s + elapsed[i + 1])
        least = slack if slack < least else least
        slack_after[i] = least
    has_displaced = any(origin_s + jobs[i][2] / rate <= jobs[i][0] for i in late)
    return _Split(jobs, origin_s, feasible, keys, elapsed, slack_before, slack_after, has_displaced)


@dataclass(slots=True)
class _InstanceLoad:
    """An instance's snapshot plus what was sent to it since, summarised once per change."""

    snapshot: LoadSnapshot
    version: int  # of its in-flight list
    jobs: list[PrefillJob]  # pending prefills, then in-flight ones; item = index
    work_tokens: int  # their total prefill work
    pending_blocks: int  # KV blocks their prompts still need
    decode_features: StepFeatures  # decodes now, plus the in-flight requests' first decodes
    tightest_tpot_s: float  # among decodes now and in-flight requests
    rates: dict[float, float] = field(default_factory=dict)  # tightest TPOT -> tokens/s
    splits: dict[float, _Split] = field(default_factory=dict)  # by rate; the latest origin


def _summarise(
    snapshot: LoadSnapshot, in_flight: list[InFlightRequest], version: int
) -> _InstanceLoad:
    jobs: list[PrefillJob] = []
    block_size = snapshot.block_size
    work = blocks = 0
    for index, p in enumerate(snapshot.pending_prefills):
        jobs.append((p.deadline_s, p.priority, p.work_tokens, index))
        work += p.work_tokens
        blocks += -(-p.work_tokens // block_size)
    features = snapshot.decode_features.copy()
    tightest = snapshot.tightest_tpot_s
    for r in in_flight:
        jobs.append((r.deadline_s, r.priority, r.num_prompt_tokens, len(jobs)))
        work += r.num_prompt_tokens
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
    slack_s: float  # least slack among the instance's feasible prefills, the new one included
    kv_free_blocks: int  # blocks left once every pending prompt has its KV
    displaced_priority: int  # of the most important request it pushes late (tier 1)
    displaced_work_tokens: int  # prefill work it pushes late (tier 1)


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
        best, reason = self._pick(options)
        if best is None:
            least = min(o.predicted_ttft_s for o in options)
            return DispatchDecision(None, "infeasible", least)
        snapshot = next(s for s in candidates if s.instance_id == best.instance_id)
        deadline_s = request.arrival_s + request.slo.ttft_s - self._transfer_s(request, snapshot)
        self._in_flight.add(best.instance_id, in_flight_record(request, now, deadline_s))
        return DispatchDecision(best.instance_id, reason, best.predicted_ttft_s)

    def _pick(self, options: list[_Option]) -> tuple[_Option | None, str]:
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
        if self.admission_control:
            return None, "infeasible"
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
        blocks_needed = -(-work // snapshot.block_size)
        kv_free = snapshot.num_free_blocks - load.pending_blocks - blocks_needed
        if rate <= 0:
            return _Option(snapshot.instance_id, _INFEASIBLE, math.inf, -math.inf, kv_free, 0, 0)
        # Project the snapshot forward: the instance has kept working since it was taken, but
        # cannot have run out of work before now (so a stale idle snapshot is no head start).
        origin_s = max(snapshot.time_s, now - load.work_tokens / rate)
        split = load.splits.get(rate)
        if split is None or split.origin_s != origin_s:
            split = _split(load.jobs, origin_s, rate)
            load.splits[rate] = split
        own_s = work / rate
        fits = kv_free >= 0 and self._decode_fits(request, load, snapshot, tightest_s)
        tier, completion_s, slack_s, displaced_priority, displaced_work = self._try(
            split, origin_s, rate, deadline_s, slo.priority, work, own_s
        )
        if not fits:
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
        rate: float,
        deadline_s: float,
        priority: int,
        work: int,
        own_s: float,
    ) -> tuple[int, float, float, int, int]:
        """(tier, predicted prefill completion, slack, most important displaced priority,
        displaced work) of the new request added to `split`'s jobs."""
        if not split.has_displaced:
            # Nothing was pushed late for others, so adding a job changes nothing before its
            # EDF position; if everyone after it absorbs its time, split_feasible would keep
            # them all, and answer exactly this.
            position = bisect_right(split.keys, (deadline_s, priority))
            done_s = origin_s + split.elapsed_s[position] + own_s
            if done_s <= deadline_s and split.min_slack_after[position] >= own_s:
                least_s = min(
                    split.min_slack_before[position],
                    deadline_s - done_s,
                    split.min_slack_after[position] - own_s,
                )
                return _FEASIBLE, done_s, least_s, 0, 0
        jobs = split.jobs
        new_index = len(jobs)
        with_new = [*jobs, (deadline_s, priority, work, new_index)]
        feasible, _ = split_feasible(with_new, origin_s, rate)
        total_s = 0.0
        slack_s = math.inf
        completion_s: float | None = None
        for index in feasible:
            job_deadline_s, _, job_work, _ = with_new[index]
            total_s += job_work / rate
            slack_s = min(slack_s, job_deadline_s - (origin_s + total_s))
            if index == new_index:
                completion_s = origin_s + total_s
        if completion_s is None:
            # Late: served after the feasible work, with what capacity is left.
            return _INFEASIBLE, origin_s + total_s + own_s, slack_s, 0, 0
        kept = set(feasible)
        displaced = [jobs[i] for i in split.feasible if i not in kept]
        if not displaced:
            return _FEASIBLE, completion_s, slack_s, 0, 0
        most_important = min(job[1] for job in displaced)
        tier = _DISPLACES_LESS_IMPORTANT if most_important > priority else _INFEASIBLE
        return tier, completion_s, slack_s, most_important, sum(job[2] for job in displaced)

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
        linked = links.get(prefill_instance_id, frozenset())
        candidates = [
            s
            for s in snapshots
            if s.instance_id in linked and s.role == "decode" and not s.draining
        ]
        if not candidates:
            return DispatchDecision(None, "no-linked-decode-instance")
        ctx = request.num_prompt_tokens
        fitting: list[tuple[int, float, str]] = []
        fallback: list[tuple[int, str]] = []
        for s in candidates:
            in_flight, _ = self._in_flight_decodes.since(s)
            features = s.decode_features.copy()
            tightest_s = min(s.tightest_tpot_s, request.slo.tpot_s)
            blocks = 0
            for r in in_flight:
                features.add_decode(r.num_prompt_tokens)
                tightest_s = min(tightest_s, r.tpot_s)
                blocks += -(-(r.num_prompt_tokens + 1) // s.block_size)
            features.add_decode(ctx)
            blocks += -(-(ctx + 1) // s.block_size)
            kv_free = s.num_free_blocks - blocks
            headroom_s = self._gap_bound_s(tightest_s) - self.cost_model.predict(features)
            fallback.append((kv_free, s.instance_id))
            if kv_free >= 0 and headroom_s >= 0:
                fitting.append((kv_free, headroom_s, s.instance_id))
        if fitting:
            chosen = min(fitting, key=lambda f: (-f[0], -f[1], f[2]))[2]
            reason = "fits"
        else:
            chosen = min(fallback, key=lambda f: (-f[0], f[1]))[1]
            reason = "most-free-kv"
        deadline_s = request.arrival_s + request.slo.ttft_s
        self._in_flight_decodes.add(chosen, in_flight_record(request, now, deadline_s))
        return DispatchDecision(chosen, reason)
