"""A `ScalingDecision` checked against the instances' lives (`cluster.lifecycle`), and the
`ClusterView` a scaler is shown: shared by the elastic simulator and the live server's control
loop, so both apply the same scaler object's decisions by the same rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hyperflexis.cluster.lifecycle import Lifecycle
from hyperflexis.cluster.scaler import (
    ClusterView,
    InstanceView,
    PoolLimits,
    ScalingDecision,
    StartupModel,
)
from hyperflexis.cluster.scaler.decision import DrainTarget, WeightSource
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.scheduler.config import Role


@dataclass(frozen=True, slots=True)
class StartInstance:
    """A checked scale-out: the new instance takes traffic `startup_s` after the decision."""

    instance_id: str
    role: Role
    startup_s: float
    detail: str  # where its weights come from, and the start-up time
    weight_source: WeightSource = "disk"  # what the start-up time was predicted for


@dataclass(frozen=True, slots=True)
class DrainInstance:
    """A checked scale-in or role switch: drain, then stop or flip."""

    instance_id: str
    target: DrainTarget


def check_decision(
    scaler_name: str,
    decision: ScalingDecision,
    lifecycle: Lifecycle,
    pools: Mapping[Role, PoolLimits],
    startup: StartupModel,
) -> StartInstance | DrainInstance:
    """What `decision` asks of the cluster as it is now; a decision the cluster cannot carry
    out (an id in use, a pool not in use, an instance that is not active) raises."""
    instance_id = decision.instance_id
    if decision.kind == "scale_out":
        if instance_id in lifecycle.lives:
            raise RuntimeError(f"scaler {scaler_name!r} reused instance id {instance_id!r}")
        if decision.role not in pools:
            raise RuntimeError(f"scaler {scaler_name!r} started a {decision.role} instance")
        startup_s = decision.startup_s
        source: WeightSource = decision.weight_source or "disk"
        if source == "peer" and not lifecycle.is_live(decision.peer_id):
            source, startup_s = "disk", None  # the peer left before the copy could start
        if startup_s is None:
            startup_s = startup.startup_s(source)[0]
        peer = f" {decision.peer_id}" if source == "peer" else ""
        detail = f"weights from {source}{peer}, {startup_s:.2f} s"
        return StartInstance(instance_id, decision.role, startup_s, detail, source)
    life = lifecycle.lives.get(instance_id)
    if life is None or life.state != "active":
        raise RuntimeError(
            f"scaler {scaler_name!r} decided {decision.kind} on {instance_id!r}, which is not "
            "an active instance"
        )
    target: DrainTarget = "stop" if decision.kind == "scale_in" else "flip"
    if target == "flip" and life.role == "mixed":
        raise RuntimeError(f"scaler {scaler_name!r} flipped mixed {instance_id!r}")
    return DrainInstance(instance_id, target)


def cluster_view(
    lifecycle: Lifecycle,
    pools: Mapping[Role, PoolLimits],
    model: str,
    snapshot: Callable[[str], LoadSnapshot],
) -> ClusterView:
    """The cluster as the scaler sees it: every instance holding an accelerator, with the
    `snapshot` of each that serves (active or draining)."""
    views = []
    for instance_id, life in lifecycle.lives.items():
        if life.state == "stopped":
            continue
        if life.state == "starting":
            views.append(InstanceView(instance_id, life.role, "starting", model))
            continue
        views.append(
            InstanceView(
                instance_id,
                life.role,
                life.state,
                model,
                life.drain_target,
                snapshot(instance_id),
            )
        )
    return ClusterView(tuple(views), pools, lifecycle.link_table)
