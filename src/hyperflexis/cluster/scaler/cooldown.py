"""The cooldown against flapping (DESIGN.md §6): a pool that grew does not shrink until its new
instance has served for `cooldown_s`.

A pool grows by a scale-out or a role switch into it. Counted from the decision, a slow start
ate the cooldown: live, a start took 12 s of a 20 s cooldown, and the instance served 8 s before
it was drained, then the demand came back and a new one started (docs/results.md, "Live:
`serve --scaler` under a rise and fall"). So the cooldown of a pool counts from the moment its
grown instance serves: the first view that shows it active in the new role. That is at most one
control interval after it really began to serve, so the pool serves at least `cooldown_s` with
it; while it is still starting or flipping the pool does not shrink at all. A growth whose
instance leaves before it serves (a start that failed) counts from its decision, as does one
the driver never applies (forgotten after `expire_s`, as `tracker.TransitionTracker` does).

Pure: `now` and the view come from the scaler's driver.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperflexis.cluster.scaler.decision import ClusterView, ScalingDecision
from hyperflexis.scheduler.config import Role


@dataclass(slots=True)
class _Growth:
    role: Role  # the pool it grows
    decided_s: float
    seen: bool = False  # the view has shown the instance since the decision


class Cooldown:
    """Per pool, when its latest growth began to serve, and the growths not serving yet."""

    def __init__(self, cooldown_s: float, expire_s: float = 600.0) -> None:
        if cooldown_s < 0:
            raise ValueError(f"invalid 'cooldown_s': must be >= 0, got {cooldown_s}")
        if not expire_s > 0:
            raise ValueError(f"invalid 'expire_s': must be > 0, got {expire_s}")
        self.cooldown_s = cooldown_s
        self.expire_s = expire_s
        self._growing: dict[str, _Growth] = {}  # by instance id: grown, not serving yet
        self._since_s: dict[Role, float] = {}  # per pool: its latest growth served (or decided)

    def record(self, now: float, decisions: list[ScalingDecision]) -> None:
        """Remember the growths among `decisions` (scale-outs and role switches)."""
        for decision in decisions:
            if decision.kind == "scale_in":
                continue
            self._growing[decision.instance_id] = _Growth(decision.role, now)
            # From the decision if that is later than the pool's last growth served.
            self._since_s[decision.role] = max(self._since_s.get(decision.role, now), now)

    def sync(self, now: float, view: ClusterView) -> None:
        """Growths the view shows serving restart their pool's cooldown now."""
        by_id = {i.instance_id: i for i in view.instances}
        for instance_id, growth in list(self._growing.items()):
            instance = by_id.get(instance_id)
            if instance is not None and instance.state == "active" and instance.role == growth.role:
                self._since_s[growth.role] = max(self._since_s[growth.role], now)
                del self._growing[instance_id]
            elif (instance is None and growth.seen) or now - growth.decided_s > self.expire_s:
                del self._growing[instance_id]  # it left (or never came): from the decision
            elif instance is not None:
                growth.seen = True

    def is_cooling(self, role: Role, now: float) -> bool:
        """Whether `role` may not shrink now: a growth of it is not serving yet, or began to
        serve less than `cooldown_s` ago."""
        if any(growth.role == role for growth in self._growing.values()):
            return True
        since = self._since_s.get(role)
        return since is not None and now - since < self.cooldown_s

    def serving_since_s(self, role: Role) -> float | None:
        """When the pool's latest growth began to serve (as first seen), or was decided if
        that is later; None if it never grew."""
        return self._since_s.get(role)
