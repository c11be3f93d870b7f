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

Where a new request lands in an instance's prefill queue is `dispatch_split.py`; the per-instance
summary those checks read, kept up to date between snapshots, is `dispatch_load.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from hyperflexis.cluster.dispatch_baselines import in_flight_record, new_request_candidates
from hyperflexis.cluster.dispatch_load import InstanceLoad, summarise
from hyperflexis.cluster.dispatch_split import (
    DISPLACES_LESS_IMPORTANT,
    FEASIBLE,
    INFEASIBLE,
    Split,
    place,
    split_jobs,
)
from hyperflexis.cluster.dispatcher import (
    DispatchDecision,
    Dispatcher,
    DispatchRequest,
    linked_decode_snapshots,
)
from hyperflexis.cluster.inflight import InFlight
from hyperflexis.cluster.registry import register_dispatcher
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import ROLES, Role, SchedulerConfig
from hyperflexis.scheduler.feasibility import budgeted_prefill_rate
from hyperflexis.scheduler.kv_blocks import num_blocks_for
from hyperflexis.scheduler.step_budget import step_gap_bound_s

# Seconds to move a prompt's KV from a prefill to a decode instance, by prompt length.
KVTransferTime = Callable[[int], float]


@dataclass(frozen=True, slots=True)
class _Option:
    """The new request at one instance."""

    instance_id: str
    tier: int  # FEASIBLE, DISPLACES_LESS_IMPORTANT or INFEASIBLE
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
        self._loads: dict[str, InstanceLoad] = {}

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
        load.add(record, deadline_s, version)

    def _pick(self, options: list[_Option], request: DispatchRequest) -> tuple[_Option | None, str]:
        feasible = [o for o in options if o.tier == FEASIBLE]
        if feasible:
            return min(
                feasible, key=lambda o: (-o.slack_s, -o.kv_free_blocks, o.instance_id)
            ), "feasible"
        displacing = [o for o in options if o.tier == DISPLACES_LESS_IMPORTANT]
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

    def _load(self, snapshot: LoadSnapshot) -> InstanceLoad:
        in_flight, version = self._in_flight.since(snapshot)
        load = self._loads.get(snapshot.instance_id)
        if load is None or load.snapshot is not snapshot or load.version != version:
            load = summarise(snapshot, in_flight, version)
            self._loads[snapshot.instance_id] = load
        return load

    def _evaluate(self, request: DispatchRequest, snapshot: LoadSnapshot, now: float) -> _Option:
        load = self._load(snapshot)
        slo = request.slo
        tightest_s = min(load.tightest_tpot_s, slo.tpot_s)
        rate = self._rate(load, tightest_s)
        transfer_s = self._transfer_s(request, snapshot)
        deadline_s = request.arrival_s + slo.ttft_s - transfer_s
        work = request.num_prompt_tokens
        block_size = snapshot.block_size
        kv_free = snapshot.num_free_blocks - load.pending_blocks - num_blocks_for(work, block_size)
        if rate <= 0:
            return _Option(snapshot.instance_id, INFEASIBLE, math.inf, -math.inf, kv_free, 0, 0)
        placed = place(self._split(load, rate, now), now, deadline_s, slo.priority, work)
        # KV for its prompt once the prefills served before it (EDF) have theirs; the ones
        # after it, or late, wait for KV (the scheduler skips them rather than block).
        kv_fits = (
            num_blocks_for(placed.work_ahead_tokens + work, block_size) <= snapshot.num_free_blocks
        )
        tier = placed.tier
        if not (kv_fits and self._decode_fits(request, load, snapshot, tightest_s)):
            tier = INFEASIBLE
        return _Option(
            snapshot.instance_id,
            tier,
            placed.completion_s + transfer_s - request.arrival_s,
            placed.slack_s,
            kv_free,
            placed.displaced_priority,
            placed.displaced_work_tokens,
        )

    def _rate(self, load: InstanceLoad, tightest_s: float) -> float:
        """The instance's budgeted prefill rate with `tightest_s` the tightest TPOT; it uses the
        decodes running now, as the instance's own check does."""
        rate = load.rates.get(tightest_s)
        if rate is None:
            config = self._configs[load.snapshot.role]
            features = load.snapshot.decode_features
            rate = budgeted_prefill_rate(self.cost_model, features, tightest_s, config)
            load.rates[tightest_s] = rate
        return rate

    def _split(self, load: InstanceLoad, rate: float, now: float) -> Split:
        """The instance's pending prefills split at `rate`, from the snapshot projected forward:
        the instance has worked through its backlog since the snapshot was taken, but not past
        now (a stale idle snapshot is no head start). Work sent since is all there by now.
        Cacheable while the backlog lasts: origin = time_s."""
        origin_s = max(load.snapshot.time_s, now - load.snapshot_work_tokens / rate)
        split = load.splits.get(rate)
        if split is None or split.origin_s != origin_s:
            split = split_jobs(load.jobs, origin_s, rate)
            load.splits[rate] = split
        return split

    def _decode_fits(
        self,
        request: DispatchRequest,
        load: InstanceLoad,
        snapshot: LoadSnapshot,
        tightest_s: float,
    ) -> bool:
        """A mixed instance must also run the request's decodes within the TPOT gap bound."""
        if snapshot.role != "mixed":
            return True
        features = load.decode_features.copy()
        features.add_decode(request.num_prompt_tokens)
        return self.cost_model.predict(features) <= step_gap_bound_s(
            tightest_s, self.scheduler_config
        )

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
        blocks = num_blocks_for(ctx + 1, block_size)
        features.add_decode(ctx)
        # Waiting for admission: their contexts are not published; take this request's as the
        # typical one.
        for p in snapshot.pending_prefills:
            features.add_decode(ctx)
            blocks += num_blocks_for(ctx + 1, block_size)
            tightest_s = min(tightest_s, p.tpot_s)
        for r in self._in_flight_decodes.since(snapshot)[0]:
            features.add_decode(r.num_prompt_tokens)
            blocks += num_blocks_for(r.num_prompt_tokens + 1, block_size)
            tightest_s = min(tightest_s, r.tpot_s)
        bound_s = step_gap_bound_s(tightest_s, self.scheduler_config)
        headroom_s = bound_s - self.cost_model.predict(features)
        return snapshot.num_free_blocks - blocks, headroom_s
