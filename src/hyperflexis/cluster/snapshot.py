"""`LoadSnapshot`: what an instance publishes after every step for the global dispatcher and the
scaler. Plain, picklable data: it crosses process boundaries in the server."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.config import Role
from hyperflexis.scheduler.kv_blocks import num_blocks_for
from hyperflexis.scheduler.waiting import PendingPrefill, pending_of

__all__ = ["LoadSnapshot", "PendingPrefill", "PendingSummary", "take_snapshot"]


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """What the dispatcher reads of `pending_prefills`, kept by the scheduler as its queue
    changes so that no snapshot walks the whole queue (scheduler/waiting.py)."""

    work_tokens: int  # prefill work of them all
    num_blocks: int  # KV blocks their prompts need, each rounded up on its own
    tightest_tpot_s: float  # among them; inf when none
    # Them less some that were due before `time_s` (hopeless at any prefill rate, so the
    # feasibility split sets them late at once and they affect nobody), in the same order.
    checked: tuple[PendingPrefill, ...]


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """One instance's load at `time_s`, enough to rerun its scheduler's feasibility check."""

    instance_id: str
    role: Role
    time_s: float  # when it was taken, on the driver's clock
    num_blocks: int  # KV blocks in the cache
    num_free_blocks: int
    block_size: int  # tokens per KV block
    num_running: int
    num_waiting: int
    decode_features: StepFeatures  # of the requests decoding now
    tightest_tpot_s: float  # tightest TPOT among them; inf when none decode
    earliest_decode_deadline_s: float  # soonest next-token deadline among them; inf when none
    pending_prefills: tuple[PendingPrefill, ...]  # in no particular order
    draining: bool = False  # takes no new requests (scale-in or role switch under way)
    pending_summary: PendingSummary | None = None  # None: read pending_prefills

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks


def take_snapshot(
    instance_id: str, scheduler: Scheduler, now: float, draining: bool = False
) -> LoadSnapshot:
    features = StepFeatures()
    tightest = earliest = math.inf
    prefilling = []
    for request in scheduler.running:
        if request.is_decoding:
            features.add_decode(request.num_computed_tokens)
            tightest = min(tightest, request.slo.tpot_s)
            earliest = min(earliest, request.next_token_deadline_s)
        else:
            prefilling.append(pending_of(request))
    kv = scheduler.kv
    index = scheduler.waiting_index
    pending = (*prefilling, *index.pending())
    summary = None
    if index.now <= now and index.block_size == kv.block_size:
        summary = PendingSummary(
            work_tokens=index.work_tokens + sum(p.work_tokens for p in prefilling),
            num_blocks=index.num_blocks
            + sum(num_blocks_for(p.work_tokens, kv.block_size) for p in prefilling),
            tightest_tpot_s=min(
                index.tightest_tpot_s(), min((p.tpot_s for p in prefilling), default=math.inf)
            ),
            checked=(*prefilling, *index.live_pending()),
        )
    return LoadSnapshot(
        instance_id=instance_id,
        role=scheduler.config.role,
        time_s=now,
        num_blocks=kv.num_blocks,
        num_free_blocks=kv.num_free_blocks,
        block_size=kv.block_size,
        num_running=scheduler.num_running,
        num_waiting=scheduler.num_waiting,
        decode_features=features,
        tightest_tpot_s=tightest,
        earliest_decode_deadline_s=earliest,
        pending_prefills=pending,
        draining=draining,
        pending_summary=summary,
    )
