"""What a simulation run produced: one metric record per offered request plus run counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hyperflexis.bench.metrics import RequestRecord, summarize
from hyperflexis.sim.fast_forward import StepRecord


@dataclass(slots=True)
class SimResult:
    """A finished run. Times are seconds of virtual time from the workload's start."""

    records: list[RequestRecord]  # one per offered request, in the order they ended
    duration_s: float  # from 0 to the last event (the last request's end)
    instance_seconds: float  # sum over instances of their lifetime (all alive for the run)
    num_instances: int
    num_steps: int  # engine steps simulated, fast-forwarded ones included
    num_fast_forward_steps: int
    num_preemptions: int  # summed over instances
    num_unfinished: int  # requests stuck when the events ran out (recorded as failed)
    routes: dict[str, tuple[str, ...]]  # request id -> instances it went through, in order
    kv_blocks_in_use: dict[str, int]  # instance id -> KV blocks still allocated at the end
    step_logs: dict[str, list[StepRecord]] = field(default_factory=dict)  # when recorded

    def summary(self) -> dict[str, Any]:
        """`bench.metrics.summarize` of the records plus the run's counters."""
        summary = summarize(self.records, self.duration_s, self.instance_seconds)
        summary.update(
            duration_s=self.duration_s,
            num_instances=self.num_instances,
            num_steps=self.num_steps,
            num_fast_forward_steps=self.num_fast_forward_steps,
            num_preemptions=self.num_preemptions,
            num_unfinished=self.num_unfinished,
        )
        return summary
