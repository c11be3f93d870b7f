"""`WaitingIndex`: side tables of a scheduler's waiting list, kept up to date as it changes, so
that nothing per step has to walk the whole queue (under overload it grows without bound).

- Each waiting request's `PendingPrefill` (what a snapshot publishes), built once, in waiting
  order, with the queue's prefill work, KV demand and TPOT targets summed as it changes.
- The split that `hyperflexis` reads (DESIGN.md §4.3): requests whose first-token (or next-
  token) deadline has passed are *hopeless*. A prefill due before `now` misses at any prefill
  rate, so `split_feasible` sets it late at once, and it neither makes nor breaks the feasibility
  of any other. Those are kept apart, sorted as the late set is ordered (priority, deadline,
  waiting order); the rest, whose number the SLO windows bound, is what each step re-checks.

A waiting request's deadline, priority and prefill work do not change while it waits (it gets no
tokens), which is what makes the entries valid until it leaves.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from dataclasses import dataclass

from hyperflexis.core.request import Request
from hyperflexis.scheduler.kv_blocks import num_blocks_for


@dataclass(frozen=True, slots=True)
class PendingPrefill:
    """A prefill an instance still owes: queued, or part-way through its prompt."""

    deadline_s: float  # when its first token is due
    priority: int  # 0 is most important
    work_tokens: int  # prompt tokens still to compute
    tpot_s: float = math.inf  # its TPOT target: the instance's prefill rate depends on the tightest


def pending_of(request: Request) -> PendingPrefill:
    return PendingPrefill(
        request.next_token_deadline_s,
        request.slo.priority,
        request.num_uncomputed_tokens,
        request.slo.tpot_s,
    )


# A hopeless request in late-set order: (priority, deadline, waiting order, request).
Hopeless = tuple[int, float, int, Request]


class WaitingIndex:
    """Mirror of `Scheduler.waiting`; the scheduler calls `added` and `removed` at every change.

    The waiting list's order is kept as numbers: an append gets a larger one than any before, an
    insert at the front (a preempted request) a smaller one, so sorting by it is list order."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._last_back = 0
        self._last_front = 0
        self._order: dict[str, int] = {}  # request id -> its order number
        # Every waiting request's entry by id: appended (in order), put at the front (reverse).
        self._pending_back: dict[str, PendingPrefill] = {}
        self._pending_front: dict[str, PendingPrefill] = {}
        # Not (yet) hopeless, by id: appended (in order) and put at the front (reverse order).
        self._live_back: dict[str, Request] = {}
        self._live_front: dict[str, Request] = {}
        self._due: list[tuple[float, int, Request]] = []  # live ones by deadline (lazy deletes)
        self._hopeless: list[Hopeless] = []  # sorted
        self._hopeless_keys: dict[str, Hopeless] = {}
        self.now = -math.inf  # hopeless means due before this
        # Ageing (SchedulerConfig.late_age_factor): hopeless ones by when they age (lazy
        # deletes), and the aged, taken out of the hopeless set, in the order they aged.
        self._ageing: list[tuple[float, int, Request]] = []
        self._aged: dict[str, Request] = {}
        self.work_tokens = 0  # prefill work of every waiting request
        self.num_blocks = 0  # KV blocks their prompts need, each rounded up on its own
        self._tpot_counts: dict[float, int] = {}

    # -- changes ------------------------------------------------------------------------------

    def added(self, request: Request, front: bool = False) -> None:
        key = request.request_id
        if front:
            self._last_front -= 1
            order = self._last_front
            self._live_front[key] = request
            pendings = self._pending_front
        else:
            self._last_back += 1
            order = self._last_back
            self._live_back[key] = request
            pendings = self._pending_back
        self._order[key] = order
        pending = pendings[key] = pending_of(request)
        heapq.heappush(self._due, (pending.deadline_s, order, request))
        self.work_tokens += pending.work_tokens
        self.num_blocks += num_blocks_for(pending.work_tokens, self.block_size)
        self._tpot_counts[pending.tpot_s] = self._tpot_counts.get(pending.tpot_s, 0) + 1

    def removed(self, request: Request) -> None:
        key = request.request_id
        front = self._order.pop(key) < 0
        pending = (self._pending_front if front else self._pending_back).pop(key)
        self.work_tokens -= pending.work_tokens
        self.num_blocks -= num_blocks_for(pending.work_tokens, self.block_size)
        count = self._tpot_counts[pending.tpot_s] - 1
        if count:
            self._tpot_counts[pending.tpot_s] = count
        else:
            del self._tpot_counts[pending.tpot_s]
        live = self._live_back.pop(key, None) or self._live_front.pop(key, None)
        if live is None and self._aged.pop(key, None) is None:
            self._drop_hopeless(key)

    def _drop_hopeless(self, key: str) -> None:
        entry = self._hopeless_keys.pop(key)
        del self._hopeless[bisect_left(self._hopeless, entry)]

    def age(self, now: float, factor: float) -> list[Request]:
        """Move the hopeless requests still waiting `factor` TTFT targets past their deadline by
        `now` (admission control rejected the others at once) to the aged set; returns it,
        oldest first."""
        ageing = self._ageing
        while ageing and ageing[0][0] <= now:
            _, order, request = heapq.heappop(ageing)
            key = request.request_id
            if self._order.get(key) != order or key not in self._hopeless_keys:
                continue  # left since it was pushed
            self._drop_hopeless(key)
            self._aged[key] = request
        return list(self._aged.values())

    def advance(self, now: float, age_factor: float = 0.0) -> None:
        """Move the requests due before `now` to the hopeless set (`now` never goes back); with
        `age_factor`, time them to age (`age`)."""
        self.now = now
        due = self._due
        while due and due[0][0] < now:
            deadline_s, order, request = heapq.heappop(due)
            key = request.request_id
            if self._order.get(key) != order:
                continue  # left (and maybe came back) since it was pushed
            if self._live_back.pop(key, None) is None:
                del self._live_front[key]
            entry = (request.slo.priority, deadline_s, order, request)
            self._hopeless_keys[key] = entry
            insort(self._hopeless, entry)
            if age_factor > 0:
                aged_s = deadline_s + age_factor * request.slo.ttft_s
                heapq.heappush(self._ageing, (aged_s, order, request))

    # -- reads --------------------------------------------------------------------------------

    def live(self) -> list[Request]:
        """Waiting requests not known hopeless, in waiting order."""
        return [*reversed(self._live_front.values()), *self._live_back.values()]

    def hopeless(self) -> list[Hopeless]:
        """A copy of the hopeless set, in late-set order."""
        return list(self._hopeless)

    def pending(self) -> list[PendingPrefill]:
        """Every waiting request's entry, in waiting order."""
        return [*reversed(self._pending_front.values()), *self._pending_back.values()]

    def live_pending(self) -> list[PendingPrefill]:
        """The entries of `live()`, in the same order."""
        front, back = self._pending_front, self._pending_back
        return [
            *(front[key] for key in reversed(self._live_front)),
            *(back[key] for key in self._live_back),
        ]

    def tightest_tpot_s(self) -> float:
        return min(self._tpot_counts, default=math.inf)
