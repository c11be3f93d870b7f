"""Requests a dispatcher sent since an instance's latest snapshot.

Snapshots lag: an instance publishes one per step, and many requests may arrive between two steps.
A dispatcher that only read snapshots would send a whole burst to the instance that looked
emptiest. So it remembers what it sent after each snapshot and counts that as load until a newer
snapshot (which then includes it) arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hyperflexis.cluster.snapshot import LoadSnapshot


@dataclass(frozen=True, slots=True)
class InFlightRequest:
    """A request sent to an instance that its latest snapshot may not show yet."""

    arrive_s: float  # when it reaches the instance (a decode hand-off: after its KV transfer)
    deadline_s: float  # when its prefill must be done (TTFT deadline, less any KV transfer)
    priority: int  # 0 is most important
    num_prompt_tokens: int  # prefill work, and the context its first decode reads
    tpot_s: float  # its TPOT target


@dataclass(slots=True)
class _Entries:
    requests: list[InFlightRequest] = field(default_factory=list)  # by arrival time
    seen: LoadSnapshot | None = None  # the snapshot in view when the latest one was sent
    version: int = 0  # bumped on every change, so callers can cache what they derive


class InFlight:
    """Per instance: the requests its latest snapshot cannot include yet.

    A snapshot includes a request that reached the instance at or before the time it was taken,
    unless it is the very snapshot the dispatcher was looking at when it sent the request (then
    it was taken before). That rule is exact where snapshots are taken on demand (the simulator,
    many arrivals at one instant) and off by at most a network hop where instances publish them.
    """

    __slots__ = ("_by_instance",)

    def __init__(self) -> None:
        self._by_instance: dict[str, _Entries] = {}

    def add(self, seen: LoadSnapshot, request: InFlightRequest) -> int:
        """Record a request sent to `seen`'s instance while looking at `seen`; returns the
        instance's new version number."""
        entries = self._by_instance.setdefault(seen.instance_id, _Entries())
        entries.requests.append(request)
        entries.seen = seen
        entries.version += 1
        return entries.version

    def since(self, snapshot: LoadSnapshot) -> tuple[list[InFlightRequest], int]:
        """The requests sent to `snapshot`'s instance that it does not include, and a version
        number that changes whenever that list does."""
        entries = self._by_instance.get(snapshot.instance_id)
        if entries is None:
            return [], 0
        requests = entries.requests
        if snapshot is not entries.seen and requests:
            time_s = snapshot.time_s
            kept = [r for r in requests if r.arrive_s > time_s]
            if len(kept) != len(requests):
                entries.requests = requests = kept
                entries.version += 1
        return requests, entries.version

    def count(self, snapshot: LoadSnapshot) -> int:
        return len(self.since(snapshot)[0])

    def forget(self, instance_id: str) -> None:
        """Drop an instance that left the cluster."""
        self._by_instance.pop(instance_id, None)
