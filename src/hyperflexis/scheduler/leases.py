"""The scheduler half of the P/D hand-off (DESIGN.md §10.1): a prefill instance's finished
prompts keep their KV blocks pinned under a lease until the decode peer has pulled them
(`release`) or the lease runs out (`expire`). Pure: the driver passes `now`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyperflexis.scheduler.kv_blocks import KVBlockManager


@dataclass(frozen=True, slots=True)
class Lease:
    """One finished prompt's blocks, pinned for a peer to read."""

    request_id: str
    block_ids: tuple[int, ...]  # in token order
    num_tokens: int  # tokens whose KV the blocks hold
    expires_s: float  # on the driver's clock


class LeaseTable:
    """Leases over a `KVBlockManager`'s pinned blocks."""

    def __init__(self, kv: KVBlockManager, lease_s: float) -> None:
        self.kv = kv
        self.lease_s = lease_s
        self._leases: dict[str, Lease] = {}
        self._new: dict[str, Lease] = {}  # granted since the last `take_new`, still held

    def grant(self, request_id: str, num_tokens: int, now: float) -> Lease:
        """Pin the request's blocks (it is about to be finished) for `lease_s` from `now`. A
        lease still held under the same id (the request prefilled here before) is dropped."""
        self.release(request_id)
        blocks = tuple(self.kv.pin(request_id))
        lease = Lease(request_id, blocks, num_tokens, now + self.lease_s)
        self._leases[request_id] = lease
        self._new[request_id] = lease
        return lease

    def release(self, request_id: str) -> bool:
        """Free a lease's blocks now; False when there is none (released, expired, unknown)."""
        self._new.pop(request_id, None)
        if self._leases.pop(request_id, None) is None:
            return False
        self.kv.unpin(request_id)
        return True

    def expire(self, now: float) -> list[str]:
        """Free the leases due by `now`; returns their request ids, in grant order."""
        due = [r for r, lease in self._leases.items() if lease.expires_s <= now]
        for request_id in due:
            self.release(request_id)
        return due

    def take_new(self) -> list[Lease]:
        """The leases granted since the previous call (for the step's report)."""
        new, self._new = self._new, {}
        return list(new.values())

    @property
    def next_expiry_s(self) -> float:
        """When the soonest lease expires; inf when none is held."""
        return min((lease.expires_s for lease in self._leases.values()), default=math.inf)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)
