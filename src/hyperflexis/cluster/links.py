"""`LinkTable`: which decode instances each prefill instance may hand KV to (DESIGN.md §5).

Linking every prefill to every decode instance is simplest but means every pair keeps a KV
transport open; a bounded fan-out keeps that cost linear while spreading the load evenly. The
scaler changes the table as instances join, leave and flip roles, and each change moves as few
links as it can, so transports already open stay in use.

Policies:
- `all`: every prefill instance to every decode instance;
- `balanced`: each prefill instance to `fanout` decode instances (all of them when there are
  fewer; more when decode instances outnumber `fanout` per prefill instance, so that none is
  left unlinked and idle), every decode instance's in-degree within 1 of the others';
- `pairs`: `balanced` with fan-out 1, DistServe's static pairing: built with `LinkTable.build`,
  prefill i (in the order given) hands to decode i mod D.
While any decode instance exists, every prefill instance has at least one link, and while any
prefill instance exists, every decode instance has at least one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

LinkPolicy = Literal["all", "balanced", "pairs"]
LINK_POLICIES: tuple[LinkPolicy, ...] = ("all", "balanced", "pairs")


class LinkTable:
    """Prefill -> decode links under a policy. Mutators return how many links they added or
    removed, so callers (and tests) can see the churn."""

    __slots__ = ("_decodes", "_fanout", "_links", "_policy")

    def __init__(self, policy: LinkPolicy = "balanced", fanout: int = 2) -> None:
        if policy not in LINK_POLICIES:
            raise ValueError(f"invalid link field 'policy': {policy!r}; known: {LINK_POLICIES}")
        if not isinstance(fanout, int) or isinstance(fanout, bool) or fanout < 1:
            raise ValueError(f"invalid link field 'fanout': must be an int >= 1, got {fanout!r}")
        self._policy: LinkPolicy = policy
        self._fanout = 1 if policy == "pairs" else fanout  # decode links per prefill instance
        self._links: dict[str, set[str]] = {}  # prefill id -> linked decode ids
        self._decodes: set[str] = set()

    @classmethod
    def build(
        cls,
        prefill_ids: Iterable[str],
        decode_ids: Iterable[str],
        policy: LinkPolicy = "balanced",
        fanout: int = 2,
    ) -> LinkTable:
        """A table over these instances; decode instances go in first, so with `pairs` prefill
        i links to decode i mod D (decodes in sorted id order)."""
        table = cls(policy, fanout)
        for decode_id in decode_ids:
            table.add_decode(decode_id)
        for prefill_id in prefill_ids:
            table.add_prefill(prefill_id)
        return table

    @property
    def policy(self) -> LinkPolicy:
        return self._policy

    @property
    def prefill_ids(self) -> frozenset[str]:
        return frozenset(self._links)

    @property
    def decode_ids(self) -> frozenset[str]:
        return frozenset(self._decodes)

    def links(self) -> dict[str, frozenset[str]]:
        """Prefill id -> the decode ids it may hand KV to."""
        return {p: frozenset(ds) for p, ds in self._links.items()}

    def is_linked(self, prefill_id: str, decode_id: str) -> bool:
        return decode_id in self._links.get(prefill_id, ())

    def in_degrees(self) -> dict[str, int]:
        """Decode id -> how many prefill instances link to it."""
        degrees = dict.fromkeys(self._decodes, 0)
        for decode_ids in self._links.values():
            for d in decode_ids:
                degrees[d] += 1
        return degrees

    def add_prefill(self, instance_id: str) -> int:
        self._check_new(instance_id)
        self._links[instance_id] = set()
        return self._rebalance()

    def add_decode(self, instance_id: str) -> int:
        self._check_new(instance_id)
        self._decodes.add(instance_id)
        return self._rebalance()

    def remove(self, instance_id: str) -> int:
        """Drop a prefill or decode instance and its links, then rebalance."""
        if instance_id in self._links:
            num_changes = len(self._links.pop(instance_id))
        elif instance_id in self._decodes:
            self._decodes.remove(instance_id)
            num_changes = 0
            for decode_ids in self._links.values():
                if instance_id in decode_ids:
                    decode_ids.remove(instance_id)
                    num_changes += 1
        else:
            raise ValueError(f"invalid link field 'instance_id': unknown {instance_id!r}")
        return num_changes + self._rebalance()

    def _check_new(self, instance_id: str) -> None:
        if instance_id in self._links or instance_id in self._decodes:
            raise ValueError(f"invalid link field 'instance_id': {instance_id!r} is already in")

    def _rebalance(self) -> int:
        """Restore the policy's invariants, greedily with the fewest link changes: trim
        prefills over the fan-out (dropping their busiest decodes), fill those under it (with
        the least linked decodes), then move single links from the most to the least linked
        decode instance until in-degrees are within 1. Ties go to the smallest id."""
        links, decodes = self._links, self._decodes
        if self._policy == "all":
            num_changes = 0
            for decode_ids in links.values():
                num_changes += len(decode_ids ^ decodes)
                decode_ids.clear()
                decode_ids.update(decodes)
            return num_changes
        # Enough links per prefill instance that every decode instance gets one (-(-a // b) is
        # ceil(a / b)).
        fanout = min(max(self._fanout, -(-len(decodes) // max(len(links), 1))), len(decodes))
        degrees = self.in_degrees()
        num_changes = 0
        prefills = sorted(links)
        for p in prefills:
            while len(links[p]) > fanout:
                busiest = max(links[p], key=lambda d: (degrees[d], d))
                links[p].remove(busiest)
                degrees[busiest] -= 1
                num_changes += 1
        for p in prefills:
            while len(links[p]) < fanout:
                idlest = min(decodes - links[p], key=lambda d: (degrees[d], d))
                links[p].add(idlest)
                degrees[idlest] += 1
                num_changes += 1
        while decodes:
            busiest = max(decodes, key=lambda d: (degrees[d], d))
            idlest = min(decodes, key=lambda d: (degrees[d], d))
            if degrees[busiest] - degrees[idlest] <= 1:
                break
            # One exists: fewer prefills link to `idlest` than to `busiest`.
            mover = next(p for p in prefills if busiest in links[p] and idlest not in links[p])
            links[mover].remove(busiest)
            links[mover].add(idlest)
            degrees[busiest] -= 1
            degrees[idlest] += 1
            num_changes += 2
        return num_changes
