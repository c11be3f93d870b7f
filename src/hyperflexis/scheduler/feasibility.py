"""The TTFT feasibility check shared by the instance scheduler (DESIGN.md §4.3) and the global
dispatcher (§5): which waiting prefills can all meet their deadlines, served earliest-deadline-
first at a given prefill rate, and which must go late so that the rest can."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any, NamedTuple


class PrefillJob(NamedTuple):
    deadline_s: float  # when its first token is due
    priority: int  # 0 is most important
    work_tokens: int  # prefill tokens still to compute
    item: Any  # what the caller schedules (a Request, or a snapshot entry)


def split_feasible(
    jobs: Sequence[PrefillJob], now: float, tokens_per_s: float, start_s: float = 0.0
) -> tuple[list[Any], list[Any]]:
    """Split jobs into (feasible in EDF order, late).

    Walk the jobs in deadline order accumulating predicted prefill time; at each predicted miss,
    move the least important job at or before it (highest priority number, then most work) to
    the late set until the miss is gone. A max-heap makes this O(n log n) and gives the same
    result as repeatedly removing and re-checking. A job that cannot make its deadline even alone
    at the head of the queue is late at once, so no capacity is spent on it and it never displaces
    work that can still make it. `start_s` is time already committed before the first job.
    """
    if tokens_per_s <= 0:
        return [], [job.item for job in jobs]
    late: list[Any] = []
    ordered = sorted(jobs, key=_deadline_key)
    kept: list[tuple[int, int, int, PrefillJob]] = []  # heap: least important first
    removed: set[int] = set()
    elapsed_s = start_s
    for index, job in enumerate(ordered):
        own_s = job.work_tokens / tokens_per_s
        if now + start_s + own_s > job.deadline_s:
            late.append(job.item)
            removed.add(index)
            continue
        heapq.heappush(kept, (-job.priority, -job.work_tokens, index, job))
        elapsed_s += own_s
        while now + elapsed_s > job.deadline_s:
            _, _, victim_index, victim = heapq.heappop(kept)
            elapsed_s -= victim.work_tokens / tokens_per_s
            late.append(victim.item)
            removed.add(victim_index)
    feasible = [job.item for index, job in enumerate(ordered) if index not in removed]
    return feasible, late


def _deadline_key(job: PrefillJob) -> tuple[float, int]:
    return (job.deadline_s, job.priority)
