"""`hyperflexis`: budgeted multi-SLO scheduling (DESIGN.md §4).

Each step: ongoing decodes set a time budget from their cumulative TPOT deadlines; the prefill
token budget is what the latency model says fits in it; waiting prefills are served earliest
deadline first after shedding, least important first, those that would make others miss; late
ones are rejected or served with leftover capacity; decode overload and KV exhaustion preempt the
least important running request.
"""

from __future__ import annotations

from hyperflexis.core.request import Request
from hyperflexis.perf.base import StepCostModel, StepFeatures, largest_chunk
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.feasibility import PrefillJob, split_feasible
from hyperflexis.scheduler.output import SchedulerOutput
from hyperflexis.scheduler.registry import register_policy

# Keep this fraction of KV blocks free when admitting new prefills, so running decodes can grow
# without preempting each other right after an admission.
_KV_WATERMARK = 0.01
# A decode may sit out a step only while KV usage is below this: sitting out holds KV longer.
_SIT_OUT_MAX_KV_USAGE = 0.9


@register_policy
class HyperFlexisScheduler(Scheduler):
    name = "hyperflexis"
    needs_cost_model = True

    def schedule(self, now: float) -> SchedulerOutput:
        output = SchedulerOutput()
        decodes, prefills = self._split_running()
        self._make_room_for_decodes(decodes, output, now)
        budget_s, features = self._step_budget(decodes, now)
        candidates = prefills + self.waiting
        if self.config.role == "decode":
            self._admit_decodes(candidates, decodes, features, budget_s, output)
        else:
            feasible, late = self._prioritise(candidates, decodes, features, now)
            decodes, budget_s, features = self._sit_out_for(feasible, decodes, budget_s, now)
            self._reject_late(late, output, now)
            late = [r for r in late if not r.is_finished]
            output.chunks.extend(self._chunk(r, 1) for r in decodes)
            self._fill_prefill(feasible, features, budget_s, output)
            self._fill_prefill(late, features, budget_s, output)
        output.predicted_step_s = self._model.predict(features)
        return output

    @property
    def _model(self) -> StepCostModel:
        assert self.cost_model is not None  # checked in Scheduler.__init__
        return self.cost_model

    # -- ongoing requests -------------------------------------------------------------------

    def _split_running(self) -> tuple[list[Request], list[Request]]:
        """Running requests that decode this step, and those still computing their prompt."""
        decodes, prefills = [], []
        for request in self.running:
            if request.first_token_s is not None and request.num_uncomputed_tokens == 1:
                decodes.append(request)
            else:
                prefills.append(request)
        return decodes, prefills

    def _make_room_for_decodes(
        self, decodes: list[Request], output: SchedulerOutput, now: float
    ) -> None:
        """Preempt the least important running requests while the decodes that must run do not
        fit: KV for their next token, or a step time within every decode's TPOT gap bound."""
        while decodes:
            need = sum(self._blocks_needed(r, 1) for r in decodes)
            features = StepFeatures()
            for request in decodes:
                features.add_decode(request.num_computed_tokens)
            too_slow = len(decodes) > 1 and self._model.predict(features) > self._gap_bound(decodes)
            if self.kv.can_allocate(need) and not too_slow:
                return
            victim = self._least_important(self.running if not too_slow else decodes, now)
            self._preempt(victim, output)
            if victim in decodes:
                decodes.remove(victim)

    def _gap_bound(self, decodes: list[Request]) -> float:
        """The longest step no decode in the batch may exceed."""
        tightest = min(r.slo.tpot_s for r in decodes)
        return min(self.config.max_gap_factor * tightest, self.config.max_step_s)

    def _step_budget(self, decodes: list[Request], now: float) -> tuple[float, StepFeatures]:
        """The step's time budget and the features of its decodes (DESIGN.md §4.1)."""
        features = StepFeatures()
        if not decodes:
            cap = self.config.target_step_s if self.config.role == "prefill" else None
            return cap or self.config.max_step_s, features
        earliest = min(r.next_token_deadline_s for r in decodes)
        for request in decodes:
            features.add_decode(request.num_computed_tokens)
        return min(earliest - now, self._gap_bound(decodes)), features

    def _least_important(self, requests: list[Request], now: float) -> Request:
        """Highest priority number first, then the most slack."""
        return max(requests, key=lambda r: (r.slo.priority, r.next_token_deadline_s - now))

    # -- new requests -----------------------------------------------------------------------

    def _prioritise(
        self,
        candidates: list[Request],
        decodes: list[Request],
        features: StepFeatures,
        now: float,
    ) -> tuple[list[Request], list[Request]]:
        """Split prefill candidates into feasible (EDF order) and late (most important first)."""
        if not candidates:
            return [], []
        rate = self._prefill_rate(candidates, decodes, features)
        jobs = [
            PrefillJob(r.next_token_deadline_s, r.slo.priority, r.num_uncomputed_tokens, r)
            for r in candidates
        ]
        feasible, late = split_feasible(jobs, now, rate)
        late.sort(key=lambda r: (r.slo.priority, r.next_token_deadline_s))
        return feasible, late

    def _prefill_rate(
        self, candidates: list[Request], decodes: list[Request], features: StepFeatures
    ) -> float:
        """Prefill tokens/s, estimated conservatively: steps bounded as if the tightest TPOT
        among running and waiting requests were decoding."""
        tightest = min(r.slo.tpot_s for r in candidates)
        if decodes:
            tightest = min(tightest, min(r.slo.tpot_s for r in decodes))
        step_s = min(self.config.max_gap_factor * tightest, self.config.max_step_s)
        if self.config.role == "prefill":
            step_s = self.config.target_step_s
        chunk = largest_chunk(self._model, features, 0, self.config.max_num_batched_tokens, step_s)
        return chunk / step_s

    def _sit_out_for(
        self, feasible: list[Request], decodes: list[Request], budget_s: float, now: float
    ) -> tuple[list[Request], float, StepFeatures]:
        """Let decodes that are ahead of their deadlines sit out this step when that, and only
        that, lets the most urgent prefill finish in time (DESIGN.md §4.4)."""
        features = StepFeatures()
        for request in decodes:
            features.add_decode(request.num_computed_tokens)
        if not feasible or not decodes or self.kv.usage >= _SIT_OUT_MAX_KV_USAGE:
            return decodes, budget_s, features
        urgent = feasible[0]
        work = urgent.num_uncomputed_tokens
        ctx = urgent.num_computed_tokens
        limit = self.config.max_num_batched_tokens - len(decodes)
        if largest_chunk(self._model, features, ctx, limit, budget_s) >= work:
            return decodes, budget_s, features  # it fits already
        # Decodes that could skip this step and still meet their deadline after the next one.
        alone = self._model.predict(StepFeatures().with_prefill(work, ctx))
        if now + alone > urgent.ttft_deadline_s or work > self.config.max_num_batched_tokens:
            return decodes, budget_s, features  # sitting out would not save it
        stay = [r for r in decodes if r.next_token_deadline_s - now < 2 * alone + r.slo.tpot_s]
        stay_features = StepFeatures()
        for request in stay:
            stay_features.add_decode(request.num_computed_tokens)
        stay_budget = self._gap_budget(stay, now, urgent.ttft_deadline_s - now)
        fits = largest_chunk(
            self._model,
            stay_features,
            ctx,
            self.config.max_num_batched_tokens - len(stay),
            stay_budget,
        )
        if fits >= work:
            return stay, stay_budget, stay_features
        return decodes, budget_s, features

    def _gap_budget(self, decodes: list[Request], now: float, cap_s: float) -> float:
        if not decodes:
            return cap_s
        earliest = min(r.next_token_deadline_s for r in decodes)
        return min(earliest - now, self._gap_bound(decodes), cap_s)

    def _reject_late(self, late: list[Request], output: SchedulerOutput, now: float) -> None:
        if not self.config.admission_control:
            return
        for request in late:
            if request.slo.late == "reject" and request.first_token_s is None:
                self._reject(request, output, now)

    def _fill_prefill(
        self,
        queue: list[Request],
        features: StepFeatures,
        budget_s: float,
        output: SchedulerOutput,
    ) -> None:
        """Give prefill chunks to `queue` in order while the step's time and token budgets last;
        a request that cannot get KV now is skipped, not waited for."""
        tokens_left = self.config.max_num_batched_tokens - output.num_tokens
        reserve = int(self.kv.num_blocks * _KV_WATERMARK)
        for request in queue:
            if tokens_left <= 0 or len(output.chunks) >= self.config.max_num_seqs:
                return
            ctx = request.num_computed_tokens
            num_tokens = largest_chunk(
                self._model,
                features,
                ctx,
                min(request.num_uncomputed_tokens, tokens_left),
                budget_s,
            )
            if num_tokens == 0:
                return  # the time budget is spent
            waiting = request in self.waiting
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
        decodes: list[Request],
        features: StepFeatures,
        budget_s: float,
        output: SchedulerOutput,
    ) -> None:
        """Decode role: run the decodes and admit arrived requests (their KV came from a prefill
        instance) by next-token deadline while KV and the TPOT gap bound allow."""
        output.chunks.extend(self._chunk(r, 1) for r in decodes)
        batch = list(decodes)
        for request in sorted(candidates, key=lambda r: r.next_token_deadline_s):
            if len(output.chunks) >= self.config.max_num_seqs:
                return
            trial = features.copy()
            trial.add_decode(request.num_computed_tokens)
            if batch and self._model.predict(trial) > self._gap_bound([*batch, request]):
                continue
            if not self.kv.can_allocate(
                self._blocks_needed(request, request.num_uncomputed_tokens)
            ):
                continue
            self._admit(request)
            output.chunks.append(self._chunk(request, request.num_uncomputed_tokens))
            features.add_decode(request.num_computed_tokens)
            batch.append(request)
