"""The `hyperflexis` dispatcher's view of one instance's prefill queue: its pending prefills split
by the instance's own feasibility check (`split_feasible`), kept between arrivals, and where a new
request would land in it.

A new request that pushes nobody late changes nothing before its EDF position, so it is placed
with a binary search and the slack of the prefills after it; only one that would displace
someone reruns the check. Requests sent to the instance are inserted the same way, so a burst
between two snapshots does not rebuild the split for every request.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple

from hyperflexis.scheduler.feasibility import PrefillJob, split_feasible

# How well a new request fits an instance, best first.
FEASIBLE = 0  # meets its TTFT and makes no pending request late
DISPLACES_LESS_IMPORTANT = 1  # meets its TTFT; everything it pushes late is less important
INFEASIBLE = 2


@dataclass(slots=True)
class Split:
    """An instance's pending prefills split by `split_feasible` without the new request, with
    what lets a new request that displaces nobody be tried without rerunning the check."""

    jobs: list[PrefillJob]  # the jobs split; item = index in this list
    origin_s: float  # the time the split starts from
    rate: float  # prefill tokens/s it was split at
    feasible: list[int]  # their indices, EDF order
    keys: list[tuple[float, int]]  # (deadline, priority) of the feasible ones, EDF order
    elapsed_s: list[float]  # [i]: predicted prefill time of feasible[:i]
    work_tokens: list[int]  # [i]: prefill work of feasible[:i]
    slacks_s: list[float]  # [i]: deadline minus predicted completion of feasible[i]
    has_displaced: bool  # some job went late to make room for others (not just too late alone)


class Placement(NamedTuple):
    """A new request added to an instance's split."""

    tier: int  # FEASIBLE, DISPLACES_LESS_IMPORTANT or INFEASIBLE
    completion_s: float  # predicted end of its prefill
    slack_s: float  # least slack of the new prefill and the feasible ones it delays
    displaced_priority: int  # of the most important request it pushes late (0 if none)
    displaced_work_tokens: int  # prefill work it pushes late
    work_ahead_tokens: int  # prefill work served before it


def split_jobs(jobs: list[PrefillJob], origin_s: float, rate: float) -> Split:
    feasible, late = split_feasible(jobs, origin_s, rate)
    # Built with accumulate and comprehensions: this runs once per snapshot per instance.
    chosen = [jobs[i] for i in feasible]
    keys = [(job[0], job[1]) for job in chosen]
    elapsed = [0.0, *accumulate([job[2] / rate for job in chosen])]
    work = [0, *accumulate([job[2] for job in chosen])]
    has_displaced = any(origin_s + jobs[i][2] / rate <= jobs[i][0] for i in late)
    split = Split(jobs, origin_s, rate, feasible, keys, elapsed, work, [], has_displaced)
    _update_slack(split)
    return split


def _update_slack(split: Split) -> None:
    origin_s = split.origin_s
    # Minima over ranges are taken when asked (`min` of a slice runs in C): cheaper than
    # keeping prefix and suffix minima up to date.
    split.slacks_s = [
        key[0] - (origin_s + done_s)
        for key, done_s in zip(split.keys, split.elapsed_s[1:], strict=True)
    ]


def insert_job(split: Split, job: PrefillJob) -> bool:
    """Add a job already appended to `split.jobs` (its item is its index) without rerunning the
    check, when it displaces nobody (see `place`); False when it would, and nothing changed."""
    deadline_s, priority, work, index = job
    own_s = work / split.rate
    position = bisect_right(split.keys, (deadline_s, priority))
    start_s = split.origin_s + split.elapsed_s[position]
    if (
        split.has_displaced
        or start_s + own_s > deadline_s
        or min(split.slacks_s[position:], default=math.inf) < own_s
    ):
        return False
    split.feasible.insert(position, index)
    split.keys.insert(position, (deadline_s, priority))
    elapsed = split.elapsed_s
    split.elapsed_s = elapsed[: position + 1] + [e + own_s for e in elapsed[position:]]
    done = split.work_tokens
    split.work_tokens = done[: position + 1] + [w + work for w in done[position:]]
    _update_slack(split)
    return True


def place(split: Split, now: float, deadline_s: float, priority: int, work: int) -> Placement:
    """Where a new request with prefill `work` due at `deadline_s` lands among `split`'s jobs.

    The split runs from its origin (the snapshot, projected); the new request arrives at `now`
    and cannot start before, which is all that differs from its EDF slot there."""
    own_s = work / split.rate
    if now + own_s > deadline_s:
        # Too late even alone: it would be served after the feasible work.
        done_s = max(now, split.origin_s + split.elapsed_s[-1]) + own_s
        return Placement(INFEASIBLE, done_s, deadline_s - done_s, 0, 0, 0)
    if not split.has_displaced:
        placed = _place_displacing_nobody(split, now, deadline_s, priority, own_s)
        if placed is not None:
            return placed
    return _place_by_rerun(split, now, deadline_s, priority, work)


def _place_displacing_nobody(
    split: Split, now: float, deadline_s: float, priority: int, own_s: float
) -> Placement | None:
    """Nothing was pushed late for others, so adding a job changes nothing before its EDF
    position; if everyone after it absorbs its time, `split_feasible` would keep them all, and
    answer exactly this. None when they do not."""
    position = bisect_right(split.keys, (deadline_s, priority))
    start_s = split.origin_s + split.elapsed_s[position]
    after_s = min(split.slacks_s[position:], default=math.inf)
    if start_s + own_s > deadline_s or after_s < own_s:
        return None
    done_s = max(start_s, now) + own_s
    least_s = min(deadline_s - done_s, after_s - own_s)
    return Placement(FEASIBLE, done_s, least_s, 0, 0, split.work_tokens[position])


def _place_by_rerun(
    split: Split, now: float, deadline_s: float, priority: int, work: int
) -> Placement:
    """Rerun the feasibility check with the new request among the jobs."""
    jobs, origin_s, rate = split.jobs, split.origin_s, split.rate
    own_s = work / rate
    new_index = len(jobs)
    with_new = [*jobs, (deadline_s, priority, work, new_index)]
    feasible, _ = split_feasible(with_new, origin_s, rate)
    total_s = 0.0
    slack_s = math.inf
    completion_s: float | None = None
    work_done = work_ahead = 0
    for index in feasible:
        job_deadline_s, _, job_work, _ = with_new[index]
        total_s += job_work / rate
        if index == new_index:
            completion_s = max(origin_s + total_s, now + own_s)
            slack_s = deadline_s - completion_s
            work_ahead = work_done
        elif completion_s is not None:  # served after it: its time delays them
            slack_s = min(slack_s, job_deadline_s - (origin_s + total_s))
        work_done += job_work
    if completion_s is None:
        # Late: served after the feasible work, with what capacity is left.
        done_s = max(origin_s + total_s, now) + own_s
        return Placement(INFEASIBLE, done_s, deadline_s - done_s, 0, 0, work_done)
    kept = set(feasible)
    displaced = [jobs[i] for i in split.feasible if i not in kept]
    if not displaced:
        return Placement(FEASIBLE, completion_s, slack_s, 0, 0, work_ahead)
    most_important = min(job[1] for job in displaced)
    tier = DISPLACES_LESS_IMPORTANT if most_important > priority else INFEASIBLE
    displaced_work = sum(job[2] for job in displaced)
    return Placement(tier, completion_s, slack_s, most_important, displaced_work, work_ahead)
