"""The simulator's events and its queue: a heap of `(time_s, kind_order, seq, event)`.

`kind_order` breaks ties between events at the same instant the way an engine would see them: a
step that ends at `t` is accounted before a KV transfer that lands at `t`, which is before a
request that arrives at `t`, and an instance starts its next step only after all of those, so a
step that starts at `t` sees every request that reached the instance by `t`. `seq` (push order)
breaks the remaining ties, so a run is deterministic. A driver's own events (the elastic
simulator's, `sim.elastic_events`) go into the same queue: anything with a `kind_order` does.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import ClassVar, Protocol

from hyperflexis.core.request import Request
from hyperflexis.workloads.spec import RequestSpec


@dataclass(frozen=True, slots=True)
class StepEnd:
    """An instance's regular step finishes: its scheduler records the step's tokens."""

    kind_order: ClassVar[int] = 0
    instance_index: int  # which instance
    generation: int  # the instance's generation when pushed; stale when it moved on


@dataclass(frozen=True, slots=True)
class FastForwardEnd:
    """An instance's run of fast-forwarded decode steps finishes."""

    kind_order: ClassVar[int] = 0
    instance_index: int
    generation: int


@dataclass(frozen=True, slots=True)
class TransferDone:
    """P/D: a prefilled request's KV has reached its decode instance, which queues it."""

    kind_order: ClassVar[int] = 1
    instance_index: int  # the decode instance
    request: Request  # the request as the decode instance takes it (prompt computed, 1 token)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A request reaches the cluster; the dispatcher routes it or rejects it."""

    kind_order: ClassVar[int] = 2
    spec: RequestSpec


@dataclass(frozen=True, slots=True)
class StepStart:
    """An instance picks its next step (after everything else that happened at this instant)."""

    kind_order: ClassVar[int] = 3
    instance_index: int


Event = StepEnd | FastForwardEnd | TransferDone | Arrival | StepStart


class QueuedEvent(Protocol):
    """What the queue needs of an event: its rank among events at the same instant."""

    kind_order: ClassVar[int]


class EventQueue:
    """Events by time, then kind, then push order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, QueuedEvent]] = []
        self._seq = itertools.count()

    def push(self, time_s: float, event: QueuedEvent) -> None:
        heapq.heappush(self._heap, (time_s, event.kind_order, next(self._seq), event))

    def pop(self) -> tuple[float, QueuedEvent]:
        time_s, _, _, event = heapq.heappop(self._heap)
        return time_s, event

    def __len__(self) -> int:
        return len(self._heap)
