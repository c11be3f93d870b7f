"""`hyperflexis`: budgeted multi-SLO scheduling (DESIGN.md §4).

Each step: ongoing decodes set a time budget from their cumulative TPOT deadlines, planned a
`tpot_margin` ahead because real step times scatter around the prediction; the prefill
token budget is what the latency model says fits in it; waiting prefills are served earliest
deadline first after shedding, least important first, those that would make others miss; late
ones are rejected or served with leftover capacity; decode overload and KV exhaustion preempt the
least important running request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from hyperflexis.core.request import Request, RequestStatus
from hyperflexis.perf.base import StepCostModel, StepFeatures, max_prefill_tokens
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.feasibility import PrefillJob, budgeted_prefill_rate, split_feasible
from hyperflexis.scheduler.output import SchedulerOutput
from hyperflexis.scheduler.oversize import OversizeCut
from hyperflexis.scheduler.registry import register_policy
from hyperflexis.scheduler.step_budget import idle_step_budget_s, step_budget_s, step_gap_bound_s
from hyperflexis.scheduler.waiting import Hopeless

# Keep this fraction of KV blocks free when admitting new prefills, so running decodes can grow
# without preempting each other right after an admission.
_KV_WATERMARK = 0.01
# A decode may sit out a step only while KV usage is below this: sitting out holds KV longer.
_SIT_OUT_MAX_KV_USAGE = 0.9


@dataclass(slots=True)
class _Decodes:
    """The decodes of a step, summarised once: the scheduler reads these many times."""

    requests: list[Request]
    block_size: int  # of the KV cache, to count the blocks the next tokens need
    tpot_margin: float  # plan each deadline this fraction of its time since the first token early
    features: StepFeatures = field(default_factory=StepFeatures)
    earliest_deadline_s: float = math.inf  # the soonest next-token deadline, margin applied
    tightest_tpot_s: float = math.inf
    num_new_blocks: int = 0  # KV blocks their next tokens need

    def __post_init__(self) -> None:
        # One pass with locals only: this runs over every decode every step.
        block_size, keep = self.block_size, 1.0 - self.tpot_margin
        earliest, tightest = math.inf, math.inf
        num_new_blocks = ctx_tokens = 0
        for r in self.requests:
            ctx = r.num_computed_tokens
            ctx_tokens += ctx
            # A running request holds exactly its computed tokens' blocks (_decode_chunks).
            if ctx % block_size == 0:
                num_new_blocks += 1
            tpot = r.slo.tpot_s
            # Decodes have a first token; a margin m plans the mean TPOT at (1 - m) x target.
            first = r.first_token_s
            assert first is not None
            deadline = first + keep * (r.next_token_deadline_s - first)
            if deadline < earliest:
                earliest = deadline
            if tpot < tightest:
                tightest = tpot
        self.features.num_decodes += len(self.requests)
        self.features.decode_ctx_tokens += ctx_tokens
        self.earliest_deadline_s, self.tightest_tpot_s = earliest, tightest
        self.num_new_blocks = num_new_blocks

    def without(self, dropped: list[Request]) -> _Decodes:
        gone = {id(r) for r in dropped}
        kept = [r for r in self.requests if id(r) not in gone]
        return _Decodes(kept, self.block_size, self.tpot_margin)


def _late_order(rechecked: list[Request], hopeless: list[Hopeless]) -> Iterator[Request]:
    """The whole late set in `split_feasible`'s order (most important first, then by deadline,
    then candidate order): the re-checked ones' late merged with the hopeless ones. On a tie the
    re-checked one goes first: only a running prefill can tie (a waiting one not set aside is due
    at or after `now`, every hopeless one before), and running prefills are candidates first."""
    index, end = 0, len(hopeless)
    for request in rechecked:
        key = (request.slo.priority, request.next_token_deadline_s)
        while index < end and (hopeless[index][0], hopeless[index][1]) < key:
            yield hopeless[index][3]
            index += 1
        yield request
    for entry in hopeless[index:]:
        yield entry[3]


def _late_key(request: Request) -> tuple[int, float]:
    return request.slo.priority, request.next_token_deadline_s


@register_policy
class HyperFlexisScheduler(Scheduler):
    name = "hyperflexis"
    needs_cost_model = True
    _sets_aside_hopeless: ClassVar[bool] = True  # see _candidates
    _priority_blind: ClassVar[bool] = False  # the no-prioritise ablation: every job at one priority

    _oversize: OversizeCut | None = None  # with `oversize_load`: made on the first arrival

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        load = self.config.oversize_load
        if load > 0 and request.num_computed_tokens == 0 and self.config.role != "decode":
            if self._oversize is None:
                self._oversize = OversizeCut(load)
            self._oversize.arrived(request.arrival_s, request.num_uncomputed_tokens)

    def schedule(self, now: float) -> SchedulerOutput:
        output = SchedulerOutput()
        decodes, prefills = self._split_running()
        decodes = self._make_room_for_decodes(decodes, output, now)
        budget_s = self._step_budget(decodes, now)
        if self.config.role == "decode":
            self._admit_decodes(prefills + self.waiting, decodes, budget_s, output)
        else:
            aged, rest = self._aged(prefills, now)
            candidates, hopeless = self._candidates(rest, now, aged)
            waiting_tpot_s = min(
                min((r.slo.tpot_s for r in prefills), default=math.inf),
                self.waiting_index.tightest_tpot_s(),
            )
            feasible, rechecked_late = self._prioritise(candidates, decodes, waiting_tpot_s, now)
            decodes, budget_s = self._sit_out_for(feasible, decodes, budget_s, now)
            self._reject_late(_late_order(rechecked_late, hopeless), output, now)
            output.chunks.extend(self._decode_chunks(decodes.requests))
            features = decodes.features.copy()
            budget_s = self._prefill_budget_s(budget_s)
            self._fill_prefill(aged, features, budget_s, output)  # empty unless ageing is on
            self._fill_prefill(feasible, features, budget_s, output)
            # Late work gets only capacity no feasible request needs: it may not stretch the
            # step past what the next feasible request (as tight as any waiting) could wait for.
            late_budget_s = self._prefill_budget_s(
                min(budget_s, step_gap_bound_s(waiting_tpot_s, self.config))
            )
            late = (r for r in _late_order(rechecked_late, hopeless) if not r.is_finished)
            self._fill_prefill(late, features, late_budget_s, output)
            decodes.features = features
        output.predicted_step_s = self._model.predict(decodes.features)
        return output

    @property
    def _model(self) -> StepCostModel:
        assert self.cost_model is not None  # checked in Scheduler.__init__
        return self.cost_model

    def max_decodes_per_step(self) -> float:
        return math.inf  # it never leaves a decode out for the token budget: it preempts for time

    def max_decode_only_step_s(self, num_decodes: int, tightest_tpot_s: float) -> float:
        if num_decodes <= 1:
            return math.inf  # a lone decode runs however long it takes (_make_room_for_decodes)
        return step_gap_bound_s(tightest_tpot_s, self.config)

    # -- ongoing requests -------------------------------------------------------------------

    def _split_running(self) -> tuple[_Decodes, list[Request]]:
        """Running requests that decode this step, and those still computing their prompt."""
        decodes, prefills = [], []
        for r in self.running:
            if r.is_decoding:
                decodes.append(r)
            else:
                prefills.append(r)
        return _Decodes(decodes, self.kv.block_size, self.config.tpot_margin), prefills

    def _make_room_for_decodes(
        self, decodes: _Decodes, output: SchedulerOutput, now: float
    ) -> _Decodes:
        """Preempt the least important running requests while the decodes that must run do not
        fit: KV for their next token, or a step time within every decode's TPOT gap bound."""
        while decodes.requests:
            too_slow = len(decodes.requests) > 1 and self._model.predict(
                decodes.features
            ) > step_gap_bound_s(decodes.tightest_tpot_s, self.config)
            if self.kv.can_allocate(decodes.num_new_blocks) and not too_slow:
                break
            victim = self._least_important(decodes.requests if too_slow else self.running, now)
            self._preempt(victim, output)
            decodes = decodes.without([victim])
        return decodes

    def _step_budget(self, decodes: _Decodes, now: float) -> float:
        """The step's time budget (DESIGN.md §4.1)."""
        if not decodes.requests:
            return idle_step_budget_s(self.config)
        return step_budget_s(decodes.earliest_deadline_s, decodes.tightest_tpot_s, now, self.config)

    def _prefill_budget_s(self, budget_s: float) -> float:
        """The time the step's prefill chunks may fill (the ablation without budget estimation
        overrides it)."""
        return budget_s

    def _least_important(self, requests: list[Request], now: float) -> Request:
        """Highest priority number first, then the most slack."""
        return max(requests, key=lambda r: (r.slo.priority, r.next_token_deadline_s - now))

    # -- new requests -----------------------------------------------------------------------

    def _candidates(
        self, prefills: list[Request], now: float, aged: list[Request]
    ) -> tuple[list[Request], list[Hopeless]]:
        """The prefills `_prioritise` re-checks, and the waiting requests already due (hopeless:
        late whatever the check says, scheduler/waiting.py), in late-set order; the waiting ones
        that aged are added to `aged`. The ablations that order the late set otherwise check
        everything (and age nothing)."""
        index = self.waiting_index
        if not self._sets_aside_hopeless or now < index.now:
            return prefills + self.waiting, []
        factor = self.config.late_age_factor
        index.advance(now, factor)
        if factor > 0:
            aged += index.age(now, factor)
        return prefills + index.live(), index.hopeless()

    def _aged(self, prefills: list[Request], now: float) -> tuple[list[Request], list[Request]]:
        """Running prefills that aged (`late_age_factor`; `_candidates` adds the waiting ones),
        and the others. Aged work goes ahead of the queue with the whole budget: otherwise late
        work waits for capacity no feasible request needs, which sustained overload never leaves
        (DESIGN.md §4.3)."""
        factor = self.config.late_age_factor
        if factor <= 0 or not self._sets_aside_hopeless:
            return [], prefills
        aged: list[Request] = []
        others: list[Request] = []
        for r in prefills:
            due_s = r.next_token_deadline_s + factor * r.slo.ttft_s
            (aged if due_s <= now else others).append(r)
        return aged, others

    def _prioritise(
        self, candidates: list[Request], decodes: _Decodes, waiting_tpot_s: float, now: float
    ) -> tuple[list[Request], list[Request]]:
        """Split prefill candidates into feasible (EDF order) and late (most important first)."""
        if not candidates:
            return [], []
        tightest = min(decodes.tightest_tpot_s, waiting_tpot_s)
        rate = budgeted_prefill_rate(self._model, decodes.features, tightest, self.config)
        candidates, oversize = self._split_oversize(candidates, rate, now)
        blind = self._priority_blind or self.config.shed_order == "work"
        jobs: list[PrefillJob] = [
            (
                r.next_token_deadline_s,
                0 if blind else r.slo.priority,
                len(r.token_ids) - r.num_computed_tokens,
                r,
            )
            for r in candidates
        ]
        feasible, late = split_feasible(jobs, now, rate)
        if oversize or (blind and not self._priority_blind):
            # Who goes late was chosen by size; the late set is still served in its own order.
            late += oversize
            late.sort(key=_late_key)
        return feasible, late

    def _split_oversize(
        self, candidates: list[Request], rate: float, now: float
    ) -> tuple[list[Request], list[Request]]:
        """The candidates the feasibility check weighs, and the waiting prompts above the
        oversize cut (scheduler/oversize.py), late at once; a started prefill is never cut."""
        cut = self._oversize
        if cut is None or rate <= 0:
            return candidates, []
        size = cut.cut_tokens(now, rate / (1.0 - self.config.prefill_rate_margin))
        if math.isinf(size):
            return candidates, []
        kept: list[Request] = []
        oversize: list[Request] = []
        for r in candidates:
            big = r.num_computed_tokens == 0 and r.num_uncomputed_tokens > size
            (oversize if big else kept).append(r)
        return kept, oversize

    def _sit_out_for(
        self, feasible: list[Request], decodes: _Decodes, budget_s: float, now: float
    ) -> tuple[_Decodes, float]:
        """Let decodes that are ahead of their deadlines sit out this step when that, and only
        that, lets the most urgent prefill finish in time (DESIGN.md §4.4)."""
        unchanged = decodes, budget_s
        if not feasible or not decodes.requests or self.kv.usage >= _SIT_OUT_MAX_KV_USAGE:
            return unchanged
        urgent = feasible[0]
        work, ctx = urgent.num_uncomputed_tokens, urgent.num_computed_tokens
        limit = self.config.max_num_batched_tokens
        chunk = max_prefill_tokens(self._model, decodes.features, ctx, budget_s, limit)
        if chunk >= work:
            return unchanged  # it fits already
        # Without sitting out it finishes in the next step (or later: then this overestimates).
        next_s = self._model.predict(decodes.features.with_prefill(work - chunk, ctx + chunk))
        if now + max(budget_s, 0.0) + next_s <= urgent.ttft_deadline_s:
            return unchanged  # it makes its deadline anyway
        alone_s = self._model.predict(StepFeatures().with_prefill(work, ctx))
        if now + alone_s > urgent.ttft_deadline_s or work > limit:
            return unchanged  # sitting out would not save it
        # Decodes that could skip this step and still meet their deadline after the next one.
        skip = [
            r
            for r in decodes.requests
            if r.next_token_deadline_s - now >= 2 * alone_s + r.slo.tpot_s
        ]
        if not skip:
            return unchanged
        stay = decodes.without(skip)
        stay_budget = min(self._step_budget(stay, now), urgent.ttft_deadline_s - now)
        if max_prefill_tokens(self._model, stay.features, ctx, stay_budget, limit) >= work:
            return stay, stay_budget
        return unchanged

    def _reject_late(self, late: Iterable[Request], output: SchedulerOutput, now: float) -> None:
        if not self.config.admission_control:
            return
        for request in late:
            if request.slo.late == "reject" and request.first_token_s is None:
                self._reject(request, output, now)

    def _fill_prefill(
        self,
        queue: Iterable[Request],
        features: StepFeatures,
        budget_s: float,
        output: SchedulerOutput,
    ) -> None:
        """Give prefill chunks to `queue` in order while the step's time and token budgets last;
        a request that cannot get KV now is skipped, not waited for."""
        tokens_left = (
            self.config.max_num_batched_tokens - features.num_prefill_tokens - features.num_decodes
        )
        reserve = int(self.kv.num_blocks * _KV_WATERMARK)
        for request in queue:
            if tokens_left <= 0 or len(output.chunks) >= self.config.max_num_seqs:
                return
            ctx = request.num_computed_tokens
            limit = min(request.num_uncomputed_tokens, tokens_left)
            num_tokens = max_prefill_tokens(self._model, features, ctx, budget_s, limit)
            if num_tokens == 0:
                return  # the time budget is spent
            waiting = request.status is not RequestStatus.RUNNING
            need = self._blocks_needed(request, num_tokens) + (reserve if waiting else 0)
            if not self.kv.can_allocate(need):
                continue
            if waiting:
                self._admit(request)
            output.chunks.append(self._chunk(request, num_tokens))
            features.add_prefill(num_tokens, ctx)
            tokens_left -= num_tokens

    def _admit_decodes(
        self,
        candidates: list[Request],
        decodes: _Decodes,
        budget_s: float,
        output: SchedulerOutput,
    ) -> None:
        """Decode role: run the decodes and admit arrived requests (their KV came from a prefill
        instance) by next-token deadline while KV and the TPOT gap bound allow."""
        output.chunks.extend(self._decode_chunks(decodes.requests))
        batch = decodes.requests
        for request in sorted(candidates, key=lambda r: r.next_token_deadline_s):
            if len(output.chunks) >= self.config.max_num_seqs:
                return
            grown = None
            if request.first_token_s is not None:
                grown = _Decodes([*batch, request], self.kv.block_size, self.config.tpot_margin)
            if grown is None or (batch and self._model.predict(grown.features) > budget_s):
                continue
            num_tokens = request.num_uncomputed_tokens
            if not self.kv.can_allocate(self._blocks_needed(request, num_tokens)):
                continue
            self._admit(request)
            output.chunks.append(self._chunk(request, num_tokens))
            batch = grown.requests
            decodes.features = grown.features
            budget_s = min(budget_s, step_gap_bound_s(grown.tightest_tpot_s, self.config))
