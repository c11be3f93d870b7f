"""`fcfs`: vLLM's default policy. Running requests first, then waiting ones in arrival order, under
one token budget per step with chunked prefill; when KV runs out, the latest admitted running
request is preempted and recomputed later."""

from __future__ import annotations

from hyperflexis.core.request import Request, RequestStatus
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.output import ScheduledChunk, SchedulerOutput
from hyperflexis.scheduler.registry import register_policy


@register_policy
class FCFSScheduler(Scheduler):
    name = "fcfs"

    def schedule(self, now: float) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(output, budget)
        if not output.preempted_ids:
            self._schedule_waiting(output, budget)
        return output

    # Hooks the priority-ordered baselines override.
    def _victim(self) -> Request:
        """The running request to preempt when KV runs out."""
        return self.running[-1]

    def _waiting_order(self) -> list[Request]:
        return list(self.waiting)

    def _chunk_cap(self, request: Request, budget: int) -> int:
        """Tokens of `request` to run now; 0 to skip it."""
        remaining = request.num_uncomputed_tokens
        cap = self.config.max_prefill_chunk
        if not self.config.chunked_prefill and request.num_output_tokens == 0:
            return remaining if remaining <= budget else 0
        # A preempted request recomputes in chunks even without chunked prefill: its tokens so
        # far may have outgrown any one step's budget.
        if cap is not None and remaining > 1:
            remaining = min(remaining, cap)
        return min(remaining, budget)

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        scheduled: dict[str, ScheduledChunk] = {}
        for request in list(self.running):
            if budget <= 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_tokens = self._chunk_cap(request, budget)
            if num_tokens == 0:
                continue
            while not self.kv.can_allocate(self._blocks_needed(request, num_tokens)):
                victim = self._victim()
                self._preempt(victim, output)
                dropped = scheduled.pop(victim.request_id, None)
                if dropped is not None:  # it was already in this step's batch
                    output.chunks.remove(dropped)
                    budget += dropped.num_tokens
                if victim is request:
                    break
            else:
                chunk = self._chunk(request, num_tokens)
                output.chunks.append(chunk)
                scheduled[request.request_id] = chunk
                budget -= num_tokens
        return budget

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        max_seqs = self.config.max_num_seqs
        for request in self._waiting_order():
            if budget <= 0 or len(self.running) >= max_seqs:
                break
            num_tokens = self._chunk_cap(request, budget)
            if num_tokens == 0 or not self.kv.can_allocate(
                self._blocks_needed(request, num_tokens)
            ):
                break  # first come, first served: no one overtakes the head of the queue
            self._admit(request)
            output.chunks.append(self._chunk(request, num_tokens))
            budget -= num_tokens
