"""Building decisions, shared by every policy: new instance ids, weight sources and start-up
times, which instance to drain, and the P/D links each action adds or removes.

Links come from a working copy of the driver's `LinkTable` (`link_plan`): each decision applies
its change to the copy (add the instance in its new role, remove it from its old one) and records
the difference, so decisions of one interval, applied in order by the driver's own table, make
exactly the links they announce.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from hyperflexis.cluster.links import LinkTable
from hyperflexis.cluster.scaler.decision import ClusterView, InstanceView, Link, ScalingDecision
from hyperflexis.cluster.scaler.startup import StartupModel
from hyperflexis.cluster.scaler.tracker import flipped
from hyperflexis.scheduler.config import Role

Members = dict[Role, list[str]]


def link_plan(view: ClusterView, members: Members) -> LinkTable:
    """A copy of the driver's table to plan on; without one, a full fan-out over the planned
    members of the prefill and decode pools."""
    if view.link_table is not None:
        return copy.deepcopy(view.link_table)
    return LinkTable.build(members.get("prefill", []), members.get("decode", []), policy="all")


class ActionBuilder:
    def __init__(self, startup: StartupModel) -> None:
        self.startup = startup  # where new instances get their weights, and how long it takes
        self._num_created = 0  # for fresh instance ids

    def scale_out(
        self,
        now: float,
        view: ClusterView,
        role: Role,
        links: LinkTable,
        taken: set[str],
        reason: str,
    ) -> ScalingDecision:
        """A new `role` instance; `taken` holds ids in use (the view's and pending ones)."""
        instance_id = self._new_id(role, taken)
        taken.add(instance_id)
        plan = self.startup.plan(view.instances)
        added, removed = _change(links, instance_id, None, role)
        source = plan.weight_source + (f" {plan.peer_id}" if plan.peer_id else "")
        if plan.basis == "spec":
            source += f" in {plan.weight_load_s:.2f} s"
        return ScalingDecision(
            kind="scale_out",
            role=role,
            instance_id=instance_id,
            time_s=now,
            reason=f"{reason}; weights from {source}, serving in {plan.startup_s:.2f} s "
            f"({plan.basis})",
            weight_source=plan.weight_source,
            peer_id=plan.peer_id,
            weight_load_s=plan.weight_load_s,
            startup_s=plan.startup_s,
            links_to_add=added,
            links_to_remove=removed,
        )

    def scale_in(
        self, now: float, instance: InstanceView, links: LinkTable, reason: str
    ) -> ScalingDecision:
        added, removed = _change(links, instance.instance_id, instance.role, None)
        return ScalingDecision(
            kind="scale_in",
            role=instance.role,
            instance_id=instance.instance_id,
            time_s=now,
            reason=reason,
            links_to_add=added,
            links_to_remove=removed,
        )

    def role_switch(
        self, now: float, instance: InstanceView, links: LinkTable, reason: str
    ) -> ScalingDecision:
        old, new = instance.role, flipped(instance.role)
        added, removed = _change(links, instance.instance_id, old, new)
        return ScalingDecision(
            kind="role_switch",
            role=new,
            instance_id=instance.instance_id,
            time_s=now,
            reason=reason,
            from_role=old,
            links_to_add=added,
            links_to_remove=removed,
        )

    def _new_id(self, role: Role, taken: set[str]) -> str:
        while True:
            self._num_created += 1
            instance_id = f"{role}-scaled-{self._num_created}"
            if instance_id not in taken:
                return instance_id


def least_loaded(
    view: ClusterView, role: Role, is_free: Callable[[InstanceView], bool]
) -> list[InstanceView]:
    """The role's instances the scaler may act on, cheapest to drain first: fewest requests,
    then least KV in use, then id for determinism."""

    def load(instance: InstanceView) -> tuple[int, float, str]:
        s = instance.snapshot
        if s is None:
            return 0, 0.0, instance.instance_id
        return s.num_running + s.num_waiting, s.kv_usage, instance.instance_id

    return sorted((i for i in view.instances if i.role == role and is_free(i)), key=load)


def _change(
    links: LinkTable, instance_id: str, old: Role | None, new: Role | None
) -> tuple[tuple[Link, ...], tuple[Link, ...]]:
    """Move `instance_id` from role `old` to `new` in `links` (None: absent); the links added
    and removed. Mixed instances have no links."""
    before = _pairs(links)
    if old in ("prefill", "decode") and (
        instance_id in links.prefill_ids or instance_id in links.decode_ids
    ):
        links.remove(instance_id)
    if new == "prefill":
        links.add_prefill(instance_id)
    elif new == "decode":
        links.add_decode(instance_id)
    after = _pairs(links)
    return tuple(sorted(after - before)), tuple(sorted(before - after))


def _pairs(links: LinkTable) -> set[Link]:
    return {(p, d) for p, decode_ids in links.links().items() for d in decode_ids}
