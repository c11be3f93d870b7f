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

    sent_s: float  # when the dispatcher sent it, on the driver's clock
    deadline_s: float  # when its prefill must be done (TTFT deadline, less any KV transfer)
    priority: int  # 0 is most important
    num_prompt_tokens: int  # prefill work, and the context its first decode reads
    tpot_s: float  # its TPOT target


@dataclass(slots=True)
class _Entries:
    requests: list[InFlightRequest] = field(default_factory=list)
    version: int = 0  # bumped on every change, so callers can cache what they derive


class InFlight:
    """Per instance: requests sent at or after the time of the latest snapshot seen of it."""

    __slots__ = ("_by_instance",)

    def __init__(self) -> None:
        self._by_instance: dict[str, _Entries] = {}

    def add(self, instance_id: str, request: InFlightRequest) -> None:
        entries = self._by_instance.setdefault(instance_id, _Entries())
        entries.requests.append(request)
        entries.version += 1

    def since(self, snapshot: LoadSnapshot) -> tuple[list[InFlightRequest], int]:
        """The requests sent to `snapshot`'s instance that it may not include, and a version
        number that changes whenever that list does. Drops the ones it includes: those sent
        before it was taken. One sent at the very time it was taken is kept (it may or may not
        be in it; counting it twice for one step is the safe error)."""
        entries = self._by_instance.get(snapshot.instance_id)
        if entries is None:
            return [], 0
        requests = entries.requests
        if requests and requests[0].sent_s < snapshot.time_s:
            time_s = snapshot.time_s
            entries.requests = requests = [r for r in requests if r.sent_s >= time_s]
            entries.version += 1
        return requests, entries.version

    def count(self, snapshot: LoadSnapshot) -> int:
        return len(self.since(snapshot)[0])

    def forget(self, instance_id: str) -> None:
        """Drop an instance that left the cluster."""
        self._by_instance.pop(instance_id, None)
