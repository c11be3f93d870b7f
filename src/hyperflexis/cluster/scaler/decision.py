"""The scaler's contracts (DESIGN.md §6): what it is shown of the cluster (`ClusterView`) and what
it answers (`ScalingDecision`s). Deciding is kept apart from applying: a driver (the server or the
simulator) applies decisions and reports the instances' new states in the next view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hyperflexis.cluster.links import LinkTable
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.scheduler.config import ROLES, Role

InstanceState = Literal["starting", "active", "draining"]
INSTANCE_STATES: tuple[InstanceState, ...] = ("starting", "active", "draining")
DrainTarget = Literal["stop", "flip"]
DecisionKind = Literal["scale_out", "scale_in", "role_switch"]
WeightSource = Literal["peer", "disk"]
Link = tuple[str, str]  # (prefill instance id, decode instance id)


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance as the driver reports it."""

    instance_id: str
    role: Role  # the role it serves now (a flipping instance keeps its old role until done)
    state: InstanceState  # starting: loading weights; active: serving; draining: finishing work
    model: str  # model registry name; a live instance with the same model can lend its weights
    drain_target: DrainTarget | None = None  # when draining: stop it, or flip prefill<->decode
    snapshot: LoadSnapshot | None = None  # its latest load; None while starting or unknown

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"invalid InstanceView field 'role': {self.role!r}; known: {ROLES}")
        if self.state not in INSTANCE_STATES:
            raise ValueError(
                f"invalid InstanceView field 'state': {self.state!r}; known: {INSTANCE_STATES}"
            )
        if (self.state == "draining") != (self.drain_target is not None):
            raise ValueError(
                "invalid InstanceView field 'drain_target': set exactly when state is 'draining'"
            )
        if self.drain_target == "flip" and self.role == "mixed":
            raise ValueError(
                "invalid InstanceView field 'drain_target': a mixed instance cannot flip"
            )

    @property
    def is_live(self) -> bool:
        """Serving with its weights in memory (a draining instance still holds them)."""
        return self.state in ("active", "draining")


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Bounds on one role's pool size."""

    min_instances: int = 1  # scale-in and role switches never go below this
    max_instances: int = 64  # scale-out and role switches never go above this

    def __post_init__(self) -> None:
        if self.min_instances < 0:
            raise ValueError("invalid PoolLimits field 'min_instances': must be >= 0")
        if self.max_instances < max(self.min_instances, 1):
            raise ValueError(
                "invalid PoolLimits field 'max_instances': must be >= min_instances and >= 1"
            )


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the scaler is shown at each control interval. The pools present in `pools` are the
    roles in use: `mixed` alone (collocated) or `prefill` and `decode` (disaggregated)."""

    instances: tuple[InstanceView, ...]  # every instance the driver runs, in any state
    pools: Mapping[Role, PoolLimits]  # size bounds per role in use
    # The driver's P/D links, read only: decisions give the links its own changes will make.
    # None: every prefill instance is linked to every decode instance.
    link_table: LinkTable | None = None

    def __post_init__(self) -> None:
        ids = [i.instance_id for i in self.instances]
        if len(set(ids)) != len(ids):
            raise ValueError("invalid ClusterView field 'instances': duplicate instance_id")
        if not self.pools:
            raise ValueError("invalid ClusterView field 'pools': name at least one role")
        for role in self.pools:
            if role not in ROLES:
                raise ValueError(f"invalid ClusterView field 'pools': unknown role {role!r}")
        for instance in self.instances:
            if instance.role not in self.pools:
                raise ValueError(
                    f"invalid ClusterView field 'instances': {instance.instance_id!r} has role "
                    f"{instance.role!r}, which has no pool"
                )

    @property
    def is_disaggregated(self) -> bool:
        return "prefill" in self.pools or "decode" in self.pools

    def limits(self, role: Role) -> PoolLimits:
        try:
            return self.pools[role]
        except KeyError:
            raise ValueError(f"ClusterView has no pool for role {role!r}") from None

    def snapshots(self) -> list[LoadSnapshot]:
        return [i.snapshot for i in self.instances if i.snapshot is not None]


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """One action on one instance, for the driver to apply."""

    kind: DecisionKind  # scale_out: start one; scale_in: drain then stop; role_switch: drain, flip
    role: Role  # the role the instance has after the action (scale_in: the role it leaves)
    instance_id: str  # the instance acted on; for scale_out, the id the new one must get
    time_s: float  # when it was decided, on the driver's clock
    reason: str  # the arithmetic behind it: demand, capacity, counts
    from_role: Role | None = None  # role_switch: the role it leaves
    weight_source: WeightSource | None = None  # scale_out: copy from a live peer, or load from disk
    peer_id: str | None = None  # scale_out from `peer`: the live instance to copy weights from
    weight_load_s: float | None = None  # scale_out: predicted seconds to get the weights in place
    startup_s: float | None = None  # scale_out: predicted seconds until it can take traffic
    # The P/D link changes the action makes, as the driver's `LinkTable` makes them when it
    # applies the decisions in order (add/remove the instance); rebalancing may move links of
    # other instances too. New links are set up before the instance takes traffic.
    links_to_add: tuple[Link, ...] = ()
    links_to_remove: tuple[Link, ...] = ()
