"""`POST /debug/scale`'s body (behind the API key): a scaling decision scripted by a test, applied
through the scaler's own path (`LiveScaler.apply`), and a role switch's test fault.

    {"kind": "scale_out", "instance_id": ..., "role": ...}       role: the only pool's by default
    {"kind": "scale_in" | "role_switch", "instance_id": ..., "drain_deadline_s": ...}

A role_switch may add `"switch_hang_s"`: the worker sleeps that long before it switches, its
heartbeat going on (`SwitchRole.hang_s`), a hung flip for the flip timeout to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperflexis.cluster.lifecycle import Lifecycle
from hyperflexis.cluster.scaler import PoolLimits, ScalingDecision
from hyperflexis.cluster.scaler.tracker import flipped
from hyperflexis.scheduler.config import Role
from hyperflexis.server.errors import bad_request

KINDS = ("scale_out", "scale_in", "role_switch")  # what /debug/scale may script
REASON = "scripted (/debug/scale)"


@dataclass(frozen=True, slots=True)
class Scripted:
    """A scripted decision, and how to carry it out."""

    decision: ScalingDecision
    drain_deadline_s: float | None = None  # None: the server's --drain-deadline-s
    switch_hang_s: float = 0.0  # a role switch's test fault: the worker hangs this long first


def scripted_decision(
    body: Any, now: float, lifecycle: Lifecycle, pools: Mapping[Role, PoolLimits]
) -> Scripted:
    """The body as a `Scripted` decision at `now`; anything malformed is a 400. Whether it is
    possible now is `LiveScaler.apply`'s to say."""
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        raise bad_request(f"'kind' must be one of {', '.join(KINDS)}", "kind")
    kind, instance_id = body["kind"], body.get("instance_id")
    if not isinstance(instance_id, str) or not instance_id:
        raise bad_request("'instance_id' must be a non-empty string", "instance_id")
    deadline = _seconds(body, "drain_deadline_s")
    hang_s = _seconds(body, "switch_hang_s")
    if hang_s is not None and kind != "role_switch":
        raise bad_request("'switch_hang_s' is for a role_switch only", "switch_hang_s")
    if kind == "scale_out":
        asked = body.get("role", next(iter(pools)) if len(pools) == 1 else None)
        pool = next((role for role in pools if role == asked), None)
        if pool is None:
            raise bad_request(f"'role' must be one of {', '.join(pools)}", "role")
        return Scripted(ScalingDecision("scale_out", pool, instance_id, now, REASON), deadline)
    life = lifecycle.lives.get(instance_id)
    role = "mixed" if life is None else life.role
    if kind == "role_switch" and role != "mixed":
        decision = ScalingDecision(kind, flipped(role), instance_id, now, REASON, role)
        return Scripted(decision, deadline, hang_s or 0.0)
    return Scripted(ScalingDecision(kind, role, instance_id, now, REASON), deadline)


def _seconds(body: dict[str, Any], name: str) -> float | None:
    """`body[name]`, a number >= 0 of seconds, or None when absent; else a 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise bad_request(f"'{name}' must be a number >= 0", name)
    return float(value)
