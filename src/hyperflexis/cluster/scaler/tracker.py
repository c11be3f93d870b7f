"""Instances in transition: what the scaler decided that the view does not show yet.

A driver applies a decision some time after `decide` returns it, so the next view may still show
the instance as before. The tracker remembers each decision until the view reflects it, so the
scaler counts the pools as they will be and never acts twice on an instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperflexis.cluster.scaler.decision import ClusterView, InstanceView, ScalingDecision
from hyperflexis.scheduler.config import Role


def flipped(role: Role) -> Role:
    """The role a role switch leads to."""
    if role == "prefill":
        return "decode"
    if role == "decode":
        return "prefill"
    raise ValueError(f"invalid 'role': {role!r} cannot switch (only prefill <-> decode)")


@dataclass(frozen=True, slots=True)
class _Pending:
    decision: ScalingDecision
    since_s: float  # when it was decided


class TransitionTracker:
    """Decisions not yet visible in the view, by instance id."""

    def __init__(self, expire_s: float = 600.0) -> None:
        if not expire_s > 0:
            raise ValueError(f"invalid 'expire_s': must be > 0, got {expire_s}")
        self.expire_s = expire_s  # a decision the driver never applied is forgotten after this
        self._pending: dict[str, _Pending] = {}

    def record(self, now: float, decisions: list[ScalingDecision]) -> None:
        for decision in decisions:
            if decision.instance_id in self._pending:
                raise ValueError(f"instance {decision.instance_id!r} already has a pending action")
            self._pending[decision.instance_id] = _Pending(decision, now)

    def sync(self, now: float, view: ClusterView) -> None:
        """Forget decisions the view now reflects (or that expired)."""
        by_id = {i.instance_id: i for i in view.instances}
        for instance_id, pending in list(self._pending.items()):
            if now - pending.since_s > self.expire_s or _applied(
                pending.decision, by_id.get(instance_id)
            ):
                del self._pending[instance_id]

    def is_pending(self, instance_id: str) -> bool:
        return instance_id in self._pending

    def pending_ids(self) -> set[str]:
        return set(self._pending)

    def is_free(self, instance: InstanceView) -> bool:
        """An instance the scaler may act on: active, and no action of ours in flight."""
        return instance.state == "active" and instance.instance_id not in self._pending

    def planned_members(self, view: ClusterView) -> dict[Role, list[str]]:
        """Each role's instances once every transition under way completes: starting and
        active ones, flips towards it, and new ones not in the view yet."""
        members: dict[Role, list[str]] = {role: [] for role in view.pools}
        for instance in view.instances:
            pending = self._pending.get(instance.instance_id)
            role: Role | None
            if pending is not None:
                decision = pending.decision
                role = None if decision.kind == "scale_in" else decision.role
            elif instance.state == "draining":
                role = flipped(instance.role) if instance.drain_target == "flip" else None
            else:
                role = instance.role
            if role is not None:
                members.setdefault(role, []).append(instance.instance_id)
        in_view = {i.instance_id for i in view.instances}
        for instance_id, pending in sorted(self._pending.items()):
            if pending.decision.kind == "scale_out" and instance_id not in in_view:
                members.setdefault(pending.decision.role, []).append(instance_id)
        return members


def _applied(decision: ScalingDecision, instance: InstanceView | None) -> bool:
    if decision.kind == "scale_out":
        return instance is not None
    if instance is None:  # stopped (or gone): nothing left to wait for
        return True
    if decision.kind == "scale_in":
        return instance.state != "active"
    # role_switch: draining towards the flip, or already serving the new role
    return instance.state == "draining" or instance.role == decision.role
