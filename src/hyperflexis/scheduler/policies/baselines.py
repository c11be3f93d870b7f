"""Baseline policies people run today, on the same scheduler state so comparisons are like for
like: vLLM's priority policy, EDF, Sarathi-Serve and DistServe."""

from __future__ import annotations

import dataclasses

from hyperflexis.core.request import Request
from hyperflexis.perf.base import StepCostModel
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
