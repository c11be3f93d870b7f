"""Builders for dispatcher tests: a linear latency model with round numbers, hand-built load
snapshots and requests."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyperflexis.cluster import DispatchRequest, LoadSnapshot, PendingPrefill
from hyperflexis.core import SLO, LateAction
from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler.config import Role, SchedulerConfig

# No per-step cost, no token cap and no planning margin: every instance prefills exactly 10,000
# tokens/s whatever its step budget, so expected TTFTs are easy to write down.
PREFILL_TOKENS_PER_S = 10_000.0
CONFIG = SchedulerConfig(max_num_batched_tokens=10_000_000, prefill_rate_margin=0.0)


@dataclass(frozen=True)
class LinearCost:
    """t = 0.1 ms per prefill token + 1 ms per decode."""

    decode_s: float = 1e-3

    def predict(self, features: StepFeatures) -> float:
        prefill_s = features.num_prefill_tokens / PREFILL_TOKENS_PER_S
        return prefill_s + self.decode_s * features.num_decodes


def snap(
    instance_id: str,
    pending: list[tuple[float, int, int]] | list[tuple[float, int, int, float]] | None = None,
    *,
    role: Role = "mixed",
    time_s: float = 0.0,
    num_blocks: int = 100_000,
    num_free_blocks: int | None = None,
    block_size: int = 16,
    decode_ctx: list[int] | None = None,
    tightest_tpot_s: float | None = None,
    num_running: int | None = None,
    num_waiting: int | None = None,
    draining: bool = False,
) -> LoadSnapshot:
    """A snapshot with pending prefills `(deadline_s, priority, work_tokens[, tpot_s])` and
    decodes at `decode_ctx`; decodes default to a TPOT of 0.1 s."""
    pending = pending or []
    decode_ctx = decode_ctx or []
    if tightest_tpot_s is None:
        tightest_tpot_s = 0.1 if decode_ctx else math.inf
    return LoadSnapshot(
        instance_id=instance_id,
        role=role,
        time_s=time_s,
        num_blocks=num_blocks,
        num_free_blocks=num_blocks if num_free_blocks is None else num_free_blocks,
        block_size=block_size,
        num_running=len(decode_ctx) if num_running is None else num_running,
        num_waiting=len(pending) if num_waiting is None else num_waiting,
        decode_features=StepFeatures.of(decodes=decode_ctx),
        tightest_tpot_s=tightest_tpot_s,
        earliest_decode_deadline_s=math.inf,
        pending_prefills=tuple(PendingPrefill(*job) for job in pending),
        draining=draining,
    )


def req(
    request_id: str = "r",
    num_prompt_tokens: int = 1000,
    ttft_s: float = 1.0,
    tpot_s: float = 0.1,
    priority: int = 1,
    arrival_s: float = 0.0,
    late: LateAction = "reject",
) -> DispatchRequest:
    return DispatchRequest(
        request_id, num_prompt_tokens, 16, SLO(ttft_s, tpot_s, priority, late=late), arrival_s
    )
