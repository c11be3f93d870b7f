"""The `hyperflexis` dispatcher's summary of one instance: its snapshot plus the requests sent to
it since, as the jobs, KV demand and decode load the dispatcher's checks read. Built once per
snapshot and updated in place as requests go out, with the prefill rates and feasibility splits
computed from it cached alongside."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hyperflexis.cluster.dispatch_split import Split, insert_job
from hyperflexis.cluster.inflight import InFlightRequest
from hyperflexis.cluster.snapshot import LoadSnapshot, PendingPrefill, PendingSummary
from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler.feasibility import PrefillJob
from hyperflexis.scheduler.kv_blocks import num_blocks_for


@dataclass(slots=True)
class InstanceLoad:
    """An instance's snapshot plus what was sent to it since, summarised once per change."""

    snapshot: LoadSnapshot
    version: int  # of its in-flight list
    jobs: list[PrefillJob]  # pending prefills, then in-flight ones; item = index
    snapshot_work_tokens: int  # prefill work the snapshot shows (in-flight work excluded)
    pending_blocks: int  # KV blocks their prompts still need
    decode_features: StepFeatures  # decodes now, plus the in-flight requests' first decodes
    tightest_tpot_s: float  # among decodes now, pending prefills and in-flight requests
    rates: dict[float, float] = field(default_factory=dict)  # tightest TPOT -> tokens/s
    splits: dict[float, Split] = field(default_factory=dict)  # by rate; the latest origin

    def add(self, record: InFlightRequest, deadline_s: float, version: int) -> None:
        """Count one more request sent to the instance (its in-flight list is now at
        `version`); splits that cannot take it without a rerun are dropped."""
        self.version = version
        work = record.num_prompt_tokens
        job = (deadline_s, record.priority, work, len(self.jobs))
        self.jobs.append(job)  # shared with every split: each must take it or go
        self.pending_blocks += num_blocks_for(work, self.snapshot.block_size)
        self.decode_features.add_decode(work)
        self.tightest_tpot_s = min(self.tightest_tpot_s, record.tpot_s)
        for rate, split in list(self.splits.items()):
            if not insert_job(split, job):
                del self.splits[rate]


def _deadline_then_priority(pending: PendingPrefill) -> tuple[float, int]:
    return pending.deadline_s, pending.priority


def summarise(
    snapshot: LoadSnapshot, in_flight: list[InFlightRequest], version: int
) -> InstanceLoad:
    pending = snapshot.pending_prefills
    block_size = snapshot.block_size
    summary = snapshot.pending_summary
    if summary is None:
        summary = PendingSummary(
            work_tokens=sum(p.work_tokens for p in pending),
            num_blocks=sum(num_blocks_for(p.work_tokens, block_size) for p in pending),
            tightest_tpot_s=min((p.tpot_s for p in pending), default=math.inf),
            checked=pending,
        )
    # Those due before the snapshot are late at any origin (>= its time): they affect no split.
    # In split_feasible's order already, which makes its (stable) sorts cheap.
    ordered = sorted(summary.checked, key=_deadline_then_priority)
    jobs: list[PrefillJob] = [
        (p.deadline_s, p.priority, p.work_tokens, index) for index, p in enumerate(ordered)
    ]
    work, blocks = summary.work_tokens, summary.num_blocks
    features = snapshot.decode_features.copy()
    # The instance rates its prefill as if the tightest TPOT among running and waiting requests
    # were decoding (scheduler/feasibility.py); so does its dispatcher.
    tightest = min(snapshot.tightest_tpot_s, summary.tightest_tpot_s)
    for r in in_flight:
        jobs.append((r.deadline_s, r.priority, r.num_prompt_tokens, len(jobs)))
        blocks += num_blocks_for(r.num_prompt_tokens, block_size)
        features.add_decode(r.num_prompt_tokens)
        tightest = min(tightest, r.tpot_s)
    return InstanceLoad(snapshot, version, jobs, work, blocks, features, tightest)
