"""Baseline policies people run today, on the same scheduler state so comparisons are like for
like: vLLM's priority policy, EDF, EDF that drops hopeless requests, Sarathi-Serve and
DistServe."""

from __future__ import annotations

import dataclasses

from hyperflexis.core.request import Request
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager
from hyperflexis.scheduler.output import SchedulerOutput
from hyperflexis.scheduler.policies.fcfs import FCFSScheduler
from hyperflexis.scheduler.registry import register_policy


@register_policy
class PriorityScheduler(FCFSScheduler):
    """vLLM's `priority` policy: waiting requests by (priority, arrival); when KV runs out the
    least important running request (highest priority number, then latest arrival) is
    preempted."""

    name = "priority"

    def _victim(self) -> Request:
        return max(self.running, key=lambda r: (r.slo.priority, r.arrival_s))

    def _waiting_order(self) -> list[Request]:
        return sorted(self.waiting, key=lambda r: (r.slo.priority, r.arrival_s))


@register_policy
class EDFScheduler(FCFSScheduler):
    """Earliest deadline first: waiting requests by TTFT deadline (next-token deadline for a
    preempted one); the running request with the latest deadline is preempted first."""

    name = "edf"

    def _victim(self) -> Request:
        return max(self.running, key=lambda r: r.next_token_deadline_s)

    def _waiting_order(self) -> list[Request]:
        return sorted(self.waiting, key=lambda r: r.next_token_deadline_s)


@register_policy
class SarathiScheduler(FCFSScheduler):
    """Sarathi-Serve: decodes first, then ongoing and new prefills in arrival order, under a
    fixed token budget per step (the chunk size) so decodes are never stalled by a long prompt.
    The chunk is the step's token budget (`max_num_batched_tokens`; Sarathi-Serve's published
    default for 7-8B models is 512), or `max_prefill_chunk` where that is set."""

    name = "sarathi"

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVBlockManager,
        cost_model: StepCostModel | None = None,
    ) -> None:
        chunk = config.max_prefill_chunk or config.max_num_batched_tokens
        config = dataclasses.replace(
            config, max_num_batched_tokens=chunk, max_prefill_chunk=chunk, chunked_prefill=True
        )
        super().__init__(config, kv, cost_model)

    def schedule(self, now: float) -> SchedulerOutput:
        # One-token chunks first (decodes, and a prompt's last token, which costs what a decode
        # does: wider than `Request.is_decoding`); the sort is stable so arrival order holds
        # within each.
        self.running.sort(key=lambda r: r.num_uncomputed_tokens > 1)
        return super().schedule(now)


@register_policy
class DistServeScheduler(FCFSScheduler):
    """DistServe's instance policy for P/D deployments: FCFS with whole prompts (no chunking);
    prefill instances batch whole prompts up to the token budget, decode instances batch decodes.
    The budget must hold the longest prompt whole (`Scheduler.add_request` refuses one that it
    does not)."""

    name = "distserve"

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVBlockManager,
        cost_model: StepCostModel | None = None,
    ) -> None:
        super().__init__(dataclasses.replace(config, chunked_prefill=False), kv, cost_model)


@register_policy
class EDFDropScheduler(EDFScheduler):
    """EDF that sheds: each step first drops (rejects) every waiting request whose first token
    can no longer be on time, because now plus its predicted prefill time, its whole remaining
    prompt alone in a step, is past its TTFT deadline; then schedules the rest as `edf`. A
    shedding baseline beside hyperflexis, which sheds too; it needs the latency model."""

    name = "edf-drop"
    needs_cost_model = True

    def schedule(self, now: float) -> SchedulerOutput:
        dropped = SchedulerOutput()
        for request in self.hopeless(now):
            self._reject(request, dropped, now)
        output = super().schedule(now)
        output.rejected_ids[:0] = dropped.rejected_ids
        return output

    def hopeless(self, now: float) -> list[Request]:
        """Waiting requests before their first token that cannot get it by its deadline."""
        model = self.cost_model
        assert model is not None  # checked in Scheduler.__init__
        hopeless = []
        for r in self.waiting:
            if r.first_token_s is not None:
                continue
            alone = StepFeatures().with_prefill(r.num_uncomputed_tokens, r.num_computed_tokens)
            if now + model.predict(alone) > r.ttft_deadline_s:
                hopeless.append(r)
        return hopeless
