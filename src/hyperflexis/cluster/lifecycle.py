"""The lives of an elastic cluster's instances and the rules between them (DESIGN.md §6, §10.3),
apart from any event queue: each method takes `now` and says what follows, as data.

    starting --ready--> active --drain--> draining --drained--> stopped      (target "stop")
                                                              \\-> starting   (target "flip",
                                                                             the other role)

The rules:

- **Linked before traffic.** A P/D instance joins the `LinkTable` when it becomes ready, before
  its driver lets it take traffic.
- **Drained before a flip or a stop.** A draining instance takes nothing new; it is drained once
  it is idle (no request running, queued or on its way to it, no parked hand-off's KV held). A
  decode instance leaves the link table as soon as it starts draining, so no hand-off can pick
  it; a prefill instance keeps its links while it drains (its own prefills still hand off) and
  leaves when drained.
- **Never below a pool's minimum.** A drain (stop or flip) that would leave the instance's role
  with fewer planned instances (starting or active) than its minimum is refused.
- **Parked hand-offs** (the controller's, `cluster.controller`): a prefilled request whose
  prefill instance has no active linked decode instance waits, holding its KV, until a decode
  instance becomes ready; it is never dropped.

Every change is logged as a `Transition`, every change of links in `link_log`. The driver
executes what a method returns (`Stop`, `Flip`) and reports back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from hyperflexis.cluster.controller import Links
from hyperflexis.cluster.links import LinkTable
from hyperflexis.cluster.scaler.decision import DrainTarget, InstanceState
from hyperflexis.cluster.scaler.tracker import flipped
from hyperflexis.scheduler.config import Role

LifeState = Literal["starting", "active", "draining", "stopped"]
_PLANNED = ("starting", "active")


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of an instance's life, for logs and tests."""

    time_s: float
    instance_id: str
    event: str  # start | ready | drain | drained | flip | stop
    role: Role  # its role after the event
    detail: str = ""  # e.g. the weight source of a start, the drain target of a drain


@dataclass(slots=True)
class Life:
    """Where one instance is in its life."""

    state: LifeState
    role: Role  # the role it serves, or will serve once starting (or flipping) completes
    drain_target: DrainTarget | None = None  # while draining: stop, or flip roles
    drained: bool = False  # draining and its work is done: shutting down or flipping


@dataclass(frozen=True, slots=True)
class Stop:
    """A drained instance shuts down; it releases its accelerator at `stopped_s`."""

    instance_id: str
    stopped_s: float


@dataclass(frozen=True, slots=True)
class Flip:
    """A drained instance switches to `role` (same weights, a new scheduler); it is ready to
    be linked and take traffic again at `ready_s`."""

    instance_id: str
    role: Role
    ready_s: float


class Lifecycle:
    """Every instance's `Life` and the P/D links. Instances of the initial cluster start active
    and linked."""

    def __init__(
        self,
        instances: Iterable[tuple[str, Role]],
        link_table: LinkTable,
        *,
        role_switch_s: float,
        stop_s: float,
        on_links: Callable[[Links], None] | None = None,
        minimums: Mapping[Role, int] | None = None,
    ) -> None:
        """`on_links` is called with the links each time they change (and once now), for the
        driver to route hand-offs by; `minimums` bounds each role's pool from below."""
        self.lives: dict[str, Life] = {i: Life("active", role) for i, role in instances}
        self.link_table = link_table
        self.role_switch_s = role_switch_s
        self.stop_s = stop_s
        self.links: Links = link_table.links()
        self.link_log: list[tuple[float, Links]] = [(0.0, self.links)]
        self.transitions: list[Transition] = []
        self._on_links = on_links
        self.minimums: dict[Role, int] = dict(minimums or {})
        if on_links is not None:
            on_links(self.links)

    # -- queries ----------------------------------------------------------------------------

    def is_live(self, instance_id: str | None) -> bool:
        """Serving or finishing its work: it holds weights a new instance can copy."""
        life = self.lives.get(instance_id) if instance_id is not None else None
        return life is not None and life.state in ("active", "draining")

    def counts(self) -> dict[InstanceState, int]:
        """Instances holding an accelerator, by state."""
        counts: dict[InstanceState, int] = {"starting": 0, "active": 0, "draining": 0}
        for life in self.lives.values():
            if life.state != "stopped":
                counts[life.state] += 1
        return counts

    def planned(self, role: Role) -> int:
        """Instances that serve, or will serve, `role`: starting or active."""
        return sum(
            1 for life in self.lives.values() if life.role == role and life.state in _PLANNED
        )

    # -- transitions ------------------------------------------------------------------------

    def start(self, instance_id: str, role: Role, now: float, detail: str) -> None:
        """A new instance starts (loading weights); the driver reports `ready` when it is."""
        self.lives[instance_id] = Life("starting", role)
        self._log(now, instance_id, "start", detail)

    def ready(self, instance_id: str, now: float) -> None:
        """Started (or flipped): active, and linked to its P/D partners."""
        life = self.lives[instance_id]
        life.state = "active"
        if life.role == "prefill":
            self.link_table.add_prefill(instance_id)
            self._relinked(now)
        elif life.role == "decode":
            self.link_table.add_decode(instance_id)
            self._relinked(now)
        self._log(now, instance_id, "ready")

    def drain(self, instance_id: str, target: DrainTarget, now: float) -> None:
        """An active instance stops taking new work, to stop or flip once drained."""
        life = self.lives[instance_id]
        if life.state != "active" or (target == "flip" and life.role == "mixed"):
            raise RuntimeError(f"{instance_id!r} ({life.state} {life.role}) cannot {target}")
        minimum = self.minimums.get(life.role, 0)
        if self.planned(life.role) - 1 < minimum:
            raise RuntimeError(
                f"draining {instance_id!r} would leave {life.role} below its minimum {minimum}"
            )
        life.state, life.drain_target = "draining", target
        if life.role == "decode":
            # Out of the table at once: no new hand-off can pick it, and its prefill partners
            # are relinked to the decode instances that stay.
            self.link_table.remove(instance_id)
            self._relinked(now)
        self._log(now, instance_id, "drain", target)

    def finish_drain(self, instance_id: str, idle: bool, now: float) -> Stop | Flip | None:
        """If the instance is draining and now `idle` (its driver's word: nothing running,
        queued or incoming, no parked hand-off's KV held), it is drained: what happens next,
        else None."""
        life = self.lives[instance_id]
        if life.state != "draining" or life.drained or not idle:
            return None
        life.drained = True
        self._log(now, instance_id, "drained", life.drain_target or "")
        if life.role == "prefill":
            self.link_table.remove(instance_id)
            self._relinked(now)
        if life.drain_target == "stop":
            return Stop(instance_id, now + self.stop_s)
        # Role flip: the same weights serve the other phase; the driver builds a new scheduler.
        new_role = flipped(life.role)
        life.state, life.role, life.drain_target, life.drained = "starting", new_role, None, False
        self._log(now, instance_id, "flip")
        return Flip(instance_id, new_role, now + self.role_switch_s)

    def stopped(self, instance_id: str, now: float) -> None:
        self.lives[instance_id].state = "stopped"
        self._log(now, instance_id, "stop")

    # -- helpers ----------------------------------------------------------------------------

    def _relinked(self, now: float) -> None:
        """Publish the table's new links and check them: every linked decode instance is
        active, every linked prefill instance active or draining."""
        self.links = self.link_table.links()
        for prefill_id, decode_ids in self.links.items():
            if not self.is_live(prefill_id):
                raise RuntimeError(f"link table holds {prefill_id!r}, which cannot serve")
            for decode_id in decode_ids:
                if self.lives[decode_id].state != "active":
                    raise RuntimeError(f"link table holds {decode_id!r}, which is not active")
        self.link_log.append((now, self.links))
        if self._on_links is not None:
            self._on_links(self.links)

    def _log(self, now: float, instance_id: str, event: str, detail: str = "") -> None:
        role = self.lives[instance_id].role
        self.transitions.append(Transition(now, instance_id, event, role, detail))
