"""`LoadSnapshot`: what an instance publishes after every step for the global dispatcher and the
scaler. Plain, picklable data: it crosses process boundaries in the server."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.config import Role


@dataclass(frozen=True, slots=True)
class PendingPrefill:
    """A prefill the instance still owes: queued, or part-way through its prompt."""

    deadline_s: float  # when its first token is due
    priority: int  # 0 is most important
    work_tokens: int  # prompt tokens still to compute
    tpot_s: float = math.inf  # its TPOT target: the instance's prefill rate depends on the tightest


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

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks


def take_snapshot(
    instance_id: str, scheduler: Scheduler, now: float, draining: bool = False
) -> LoadSnapshot:
    features = StepFeatures()
    tightest = earliest = math.inf
    pending = []
    for request in scheduler.running:
        if request.is_decoding:
            features.add_decode(request.num_computed_tokens)
            tightest = min(tightest, request.slo.tpot_s)
            earliest = min(earliest, request.next_token_deadline_s)
        else:
            pending.append(request)
    pending.extend(scheduler.waiting)
    kv = scheduler.kv
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
        pending_prefills=tuple(
            PendingPrefill(
                r.next_token_deadline_s, r.slo.priority, r.num_uncomputed_tokens, r.slo.tpot_s
            )
            for r in pending
        ),
        draining=draining,
    )
