"""The TTFT feasibility check shared by the instance scheduler (DESIGN.md §4.3) and the global
dispatcher (§5): which waiting prefills can all meet their deadlines, served earliest-deadline-
first at a given prefill rate, and which must go late so that the rest can."""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Sequence
from typing import Any

from hyperflexis.perf.base import StepCostModel, StepFeatures, max_prefill_tokens
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.step_budget import idle_step_budget_s, mean_step_s

# A waiting prefill, as a plain tuple because the scheduler builds hundreds per step:
# (deadline_s: when its first token is due, priority: 0 is most important,
#  work_tokens: prefill tokens still to compute, item: what the caller schedules).
PrefillJob = tuple[float, int, int, Any]


def split_feasible(
    jobs: Sequence[PrefillJob], now: float, tokens_per_s: float, start_s: float = 0.0
) -> tuple[list[Any], list[Any]]:
    """Split jobs into (feasible in EDF order, late, most important first then by deadline).

    Walk the jobs in deadline order accumulating predicted prefill time; at each predicted miss,
    move the least important job at or before it (highest priority number, then most work) to
    the late set until the miss is gone. A max-heap makes this O(n log n) and gives the same
    result as repeatedly removing and re-checking. A job that cannot make its deadline even alone
    at the head of the queue is late at once, so no capacity is spent on it and it never displaces
    work that can still make it. `start_s` is time already committed before the first job.
    """
    if tokens_per_s <= 0:
        return [], [job[3] for job in sorted(jobs, key=_PRIORITY_THEN_DEADLINE)]
    # Two stable sorts on one key each: (deadline, priority) order without building key tuples.
    ordered = sorted(jobs, key=_PRIORITY)
    ordered.sort(key=_DEADLINE)
    seconds_per_token = 1.0 / tokens_per_s
    origin_s = now + start_s
    # Fast path (light load): nothing misses in plain EDF order, so nothing is late.
    finish_s = origin_s
    for deadline_s, _, work_tokens, _ in ordered:
        finish_s += work_tokens * seconds_per_token
        if finish_s > deadline_s:
            break
    else:
        return [job[3] for job in ordered], []
    is_late = [False] * len(ordered)
    # Heap of ints, least important on top: -(priority, work) in the high bits, the job's index
    # in the low 32 (the earlier job first among equals). Ints compare much faster than tuples.
    kept: list[int] = []
    push, pop = heapq.heappush, heapq.heappop
    horizon_s = origin_s  # when the kept jobs so far would all be done
    for index, (deadline_s, priority, work_tokens, _) in enumerate(ordered):
        own_s = work_tokens * seconds_per_token
        if origin_s + own_s > deadline_s:
            is_late[index] = True
            continue
        push(kept, index - (priority << 64) - (work_tokens << 32))
        horizon_s += own_s
        while horizon_s > deadline_s:
            victim = pop(kept) & _INDEX_MASK
            horizon_s -= ordered[victim][2] * seconds_per_token
            is_late[victim] = True
    feasible = [job[3] for job, late in zip(ordered, is_late, strict=True) if not late]
    late_jobs = [job for job, late in zip(ordered, is_late, strict=True) if late]
    late_jobs.sort(key=_PRIORITY)  # stable: by deadline within a priority
    return feasible, [job[3] for job in late_jobs]


_DEADLINE = operator.itemgetter(0)
_PRIORITY = operator.itemgetter(1)
_PRIORITY_THEN_DEADLINE = operator.itemgetter(1, 0)
_INDEX_MASK = (1 << 32) - 1


def budgeted_prefill_rate(
    model: StepCostModel,
    decode_features: StepFeatures,
    tightest_tpot_s: float,
    config: SchedulerConfig,
) -> float:
    """Prefill tokens/s an instance sustains next to its decodes, estimated conservatively: every
    step bounded as if a request with `tightest_tpot_s` (the tightest among running and waiting)
    were decoding (DESIGN.md §4.3). One TPOT less the planning margin, not the gap bound: the
    cumulative deadlines hold the *mean* step there. A prefill instance steps at its target step
    time. Steps run back to back, so the rate is the chunk over the step's predicted time: where
    the token budget caps the chunk, the step ends before its time budget (a prefill instance's
    2,048-token step takes ~60 ms of its 200; dividing by the budget made long prompts look
    infeasible). Planned `prefill_rate_margin` below that: the check plans the queue as if
    nothing more urgent arrived, and arrivals with earlier deadlines go first."""
    if config.role == "prefill" or math.isinf(tightest_tpot_s):
        step_s = idle_step_budget_s(config)
    else:
        step_s = mean_step_s(tightest_tpot_s, config)
    limit = config.max_num_batched_tokens
    tokens = max_prefill_tokens(model, decode_features, 0, step_s, limit)
    if tokens <= 0:
        return 0.0
    rate = tokens / model.predict(decode_features.with_prefill(tokens, 0))
    return (1.0 - config.prefill_rate_margin) * rate
