"""`Controller`: the cluster's one pure control object (DESIGN.md §10), driven by the simulator on
its virtual clock and by the server on the wall clock.

It owns the instance records (id, role, up or down), the P/D links and each request's place:

    mixed:  running ------------------------------------------------------> ended
    P/D:    prefilling --PrefillDone--> receiving on D --TransferEnded ok--> decoding --> ended
                              \\--(no linked D)--> parked --InstanceUp(D)--/       \\-> recomputing
                                                                         (failed pull, or KV lost)

It reads no clock and does no I/O: `handle(now, event)` returns effects
(`cluster.controller_events`) for the driver to execute. The dispatcher decides (`choose` for new
requests, `choose_decode` among the decode instances linked to P for a finished prefill) from
snapshots the driver supplies through `snapshots(instance_ids)`, asked at each decision so that a
burst of hand-offs sees the load each one adds. Leased KV is released once: when the transfer ends
either way, on abort, or never (the lease expired first). A hand-off that finds no linked decode
instance is parked (never dropped) and retried, in parking order, when a decode instance comes up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hyperflexis.cluster import migration
from hyperflexis.cluster.controller_events import (
    Abort,
    DrainDue,
    Effect,
    Event,
    Fail,
    FirstToken,
    HandOff,
    InstanceStarting,
    InstanceUp,
    LeaseExpired,
    MovedOut,
    Park,
    PrefillDone,
    Redispatch,
    Reject,
    Release,
    RequestAborted,
    RequestArrived,
    RequestEnded,
    Resume,
    Route,
    TransferEnded,
)
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.links import LinkTable
from hyperflexis.cluster.placement import InstanceRecord, Placement
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.scheduler.config import Role

Links = Mapping[str, frozenset[str]]  # prefill id -> the decode ids it may hand KV to
SnapshotFn = Callable[[Sequence[str], float], Sequence[LoadSnapshot]]  # (ids, now) -> snapshots


class Controller:
    """Instance records, links and per-request hand-off state; effects out, no I/O."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        snapshots: SnapshotFn,
        *,
        links: Links | None = None,
        link_table: LinkTable | None = None,
    ) -> None:
        """Links are fixed (`links`), kept in `link_table` as instances come and go, or set by
        the driver (`set_links`, e.g. from the elastic simulator's lifecycle)."""
        self.dispatcher = dispatcher
        self._snapshots = snapshots
        self.link_table = link_table
        self.links: Links = link_table.links() if link_table is not None else (links or {})
        self.instances: dict[str, InstanceRecord] = {}  # in the order they started
        self.requests: dict[str, Placement] = {}
        self.parked: list[str] = []  # request ids, in the order they were parked
        self.num_parked = 0  # hand-offs ever parked
        self.num_handoffs = 0
        self.num_transfer_failures = 0
        self.num_recomputes = 0  # hand-offs that recompute on D (failed pull or KV lost)
        self.num_resumes = 0  # streamed requests continued elsewhere after their instance died
        self.num_migrations = 0  # requests moved off a draining instance (`cluster.migration`)

    def set_links(self, links: Links) -> None:
        self.links = links

    def snapshots(self, instance_ids: Sequence[str], now: float) -> Sequence[LoadSnapshot]:
        """The driver's snapshots of `instance_ids` now."""
        return self._snapshots(instance_ids, now)

    def parked_on(self, prefill_id: str) -> bool:
        """Whether a parked hand-off still holds KV on `prefill_id`."""
        return any(self.requests[r].kv_source == prefill_id for r in self.parked)

    def handle(self, now: float, event: Event) -> list[Effect]:
        """Apply one event; the effects, in the order the driver executes them."""
        if isinstance(event, RequestArrived):
            return self._arrived(now, event.request)
        if isinstance(event, PrefillDone):
            return self._prefill_done(now, event.request_id, event.prefill_id)
        if isinstance(event, TransferEnded):
            return self._transfer_ended(event.request_id, event.ok)
        if isinstance(event, RequestEnded):
            return self._ended(event.request_id)
        if isinstance(event, RequestAborted):
            return self._aborted(event.request_id)
        if isinstance(event, FirstToken):
            placement = self.requests.get(event.request_id)
            if placement is not None:
                placement.has_first_token = True
            return []
        if isinstance(event, LeaseExpired):
            return self._lease_expired(event.request_id)
        if isinstance(event, InstanceStarting):
            record = self.instances.setdefault(
                event.instance_id, InstanceRecord(event.instance_id, event.role)
            )
            record.role, record.up = event.role, False
            return []
        if isinstance(event, InstanceUp):
            return self._instance_up(now, event.instance_id, event.role)
        if isinstance(event, DrainDue):
            return migration.drain_due(self, now, event)
        if isinstance(event, MovedOut):
            return migration.moved_out(self, now, event)
        return self._instance_down(now, event.instance_id)

    # -- requests ---------------------------------------------------------------------------

    def _arrived(self, now: float, request: DispatchRequest) -> list[Effect]:
        instance_id, reason = self.route(now, request)
        if instance_id is None:
            return [Reject(request.request_id, reason)]
        self.requests[request.request_id] = self.placement_for(request, instance_id)
        return [Route(request.request_id, instance_id, reason)]

    def route(self, now: float, request: DispatchRequest) -> tuple[str | None, str]:
        allowed = [r.instance_id for r in self.instances.values() if r.up and r.role != "decode"]
        snapshots = self._snapshots(allowed, now)
        decision = self.dispatcher.choose(request, snapshots, now)
        if decision.instance_id is not None:
            self._check_choice(decision.instance_id, allowed, snapshots)
        return decision.instance_id, decision.reason

    def placement_for(self, request: DispatchRequest, instance_id: str) -> Placement:
        if self.instances[instance_id].role == "prefill":
            return Placement(
                request, "prefilling", instance_id, prefill_id=instance_id, kv_source=instance_id
            )
        return Placement(request, "running", instance_id)

    def _prefill_done(self, now: float, request_id: str, prefill_id: str) -> list[Effect]:
        placement = self.requests.get(request_id)
        if placement is None or placement.prefill_id != prefill_id:
            # Aborted meanwhile, or sent elsewhere off a draining instance: nobody will pull it.
            return [Release(request_id, prefill_id)]
        placement.has_first_token = True
        placement.kv_held = True
        return [self._hand_off(now, request_id, placement)]

    def _hand_off(self, now: float, request_id: str, placement: Placement) -> HandOff | Park:
        prefill_id = placement.prefill_id
        assert prefill_id is not None
        allowed = [r.instance_id for r in self.instances.values() if r.up and r.role == "decode"]
        snapshots = self._snapshots(allowed, now) if allowed else []
        with_kv = placement.kv_held and placement.kv_source == prefill_id
        links = self.links
        if not with_kv and not links.get(prefill_id):
            # A recompute needs no link: its prefill instance is gone (scaled in, flipped).
            links = {**links, prefill_id: frozenset(allowed)}
        decision = self.dispatcher.choose_decode(
            placement.request, prefill_id, snapshots, links, now
        )
        decode_id = decision.instance_id
        if decode_id is None:
            placement.stage = "parked"
            self.parked.append(request_id)
            self.num_parked += 1
            return Park(request_id, prefill_id)
        if decode_id not in links.get(prefill_id, frozenset()):
            raise RuntimeError(
                f"dispatcher {self.dispatcher.name!r} sent {request_id!r} from "
                f"{prefill_id!r} to {decode_id!r}, which is not linked"
            )
        self._check_choice(decode_id, allowed, snapshots)
        placement.instance_id = decode_id
        self.num_handoffs += 1
        if with_kv:
            placement.stage = "receiving"
            return HandOff(request_id, prefill_id, decode_id)
        placement.stage = "recomputing"
        self.num_recomputes += 1
        return HandOff(request_id, prefill_id, decode_id, with_kv=False)

    def _transfer_ended(self, request_id: str, ok: bool) -> list[Effect]:
        placement = self.requests.get(request_id)
        if placement is None or placement.stage != "receiving":
            return []  # aborted meanwhile (P released then), or not a pull
        placement.stage = "decoding" if ok else "recomputing"
        if not ok:
            self.num_transfer_failures += 1
            self.num_recomputes += 1
        return self._release(request_id, placement)

    def _lease_expired(self, request_id: str) -> list[Effect]:
        placement = self.requests.get(request_id)
        if placement is None:
            return []
        placement.kv_held = False  # a parked one recomputes; a pull under way fails
        if placement.stage == "parked" and not any(
            r.up and r.role == "decode" for r in self.instances.values()
        ):
            # No decode instance at all, for as long as the lease: end it rather than hold
            # its client forever (a driver that brings decode instances up keeps them parked).
            self.parked.remove(request_id)
            del self.requests[request_id]
            return [
                Fail(request_id, "no decode instance took the request before its KV lease ran out")
            ]
        return []

    def _ended(self, request_id: str) -> list[Effect]:
        placement = self.requests.pop(request_id, None)
        if placement is None:
            return []
        if placement.stage == "parked":
            self.parked.remove(request_id)
        return self._release(request_id, placement)

    def _aborted(self, request_id: str) -> list[Effect]:
        placement = self.requests.pop(request_id, None)
        if placement is None:
            return []
        effects: list[Effect] = []
        if placement.stage == "parked":
            self.parked.remove(request_id)
        elif self.instances[placement.instance_id].up:
            effects.append(Abort(request_id, placement.instance_id))
        return effects + self._release(request_id, placement)

    def _release(self, request_id: str, placement: Placement) -> list[Effect]:
        if not placement.kv_held:
            return []
        placement.kv_held = False
        assert placement.kv_source is not None
        if not self.instances[placement.kv_source].up:
            return []  # gone, and its KV with it
        return [Release(request_id, placement.kv_source)]

    # -- instances --------------------------------------------------------------------------

    def _instance_up(self, now: float, instance_id: str, role: Role) -> list[Effect]:
        record = self.instances.get(instance_id)
        if record is None:
            self.instances[instance_id] = InstanceRecord(instance_id, role)
        else:  # back, perhaps in another role; it keeps its place in the order
            record.role, record.up = role, True
        table = self.link_table
        if table is not None and role != "mixed":
            if instance_id in table.prefill_ids | table.decode_ids:
                table.remove(instance_id)  # up again: relinked in its (new) role
            if role == "prefill":
                table.add_prefill(instance_id)
            else:
                table.add_decode(instance_id)
            self.links = table.links()
        return self.retry_parked(now) if role == "decode" else []

    def retry_parked(self, now: float) -> list[Effect]:
        """Hand off every parked request that now has a decode instance, in parking order."""
        parked, self.parked = self.parked, []
        effects: list[Effect] = []
        for request_id in parked:
            placement = self.requests[request_id]
            placement.stage = "prefilling"
            effect = self._hand_off(now, request_id, placement)
            if not isinstance(effect, Park):  # (parked again, and counted again)
                effects.append(effect)
        return effects

    def _instance_down(self, now: float, instance_id: str) -> list[Effect]:
        record = self.instances[instance_id]
        record.up = False
        table = self.link_table
        if table is not None and instance_id in table.prefill_ids | table.decode_ids:
            table.remove(instance_id)
            self.links = table.links()
        effects: list[Effect] = []
        for request_id, placement in list(self.requests.items()):
            if placement.kv_source == instance_id:
                placement.kv_held = False  # its KV died with it
            if placement.instance_id != instance_id:
                continue
            if not placement.has_first_token:
                effects.append(self._redispatch(now, request_id, placement))
            elif (resumed := self._resume(now, request_id, placement)) is not None:
                effects.append(resumed)
            else:
                del self.requests[request_id]
                effects.append(Fail(request_id, f"instance {instance_id} stopped"))
                effects.extend(self._release(request_id, placement))
        return effects

    def _resume(
        self, now: float, request_id: str, placement: Placement
    ) -> Resume | HandOff | Park | None:
        """A request that had streamed, whose instance died: a live one continues it from the
        prompt and the output the client has (P/D: another decode instance, pulling the KV if P
        still holds it); None when no instance can."""
        if placement.prefill_id is not None:  # P/D: on a decode instance, or parked on P
            if placement.stage == "parked":
                self.parked.remove(request_id)
            return self._hand_off(now, request_id, placement)
        from_id = placement.instance_id
        allowed = [r.instance_id for r in self.instances.values() if r.up and r.role == "mixed"]
        snapshots = self._snapshots(allowed, now) if allowed else []
        instance_id = self.dispatcher.choose(placement.request, snapshots, now).instance_id
        if instance_id is None:
            return None
        self._check_choice(instance_id, allowed, snapshots)
        placement.instance_id = instance_id
        self.num_resumes += 1
        return Resume(request_id, from_id, instance_id)

    def _redispatch(self, now: float, request_id: str, placement: Placement) -> Redispatch:
        from_id = placement.instance_id
        instance_id, reason = self.route(now, placement.request)
        if instance_id is None:
            del self.requests[request_id]
        else:
            self.requests[request_id] = self.placement_for(placement.request, instance_id)
        return Redispatch(request_id, from_id, instance_id, reason)

    def _check_choice(
        self, instance_id: str, allowed: Sequence[str], snapshots: Sequence[LoadSnapshot]
    ) -> None:
        if instance_id not in allowed:
            raise RuntimeError(
                f"dispatcher {self.dispatcher.name!r} chose {instance_id!r}, which cannot take "
                "this request"
            )
        if any(s.instance_id == instance_id and s.draining for s in snapshots):
            raise RuntimeError(
                f"dispatcher {self.dispatcher.name!r} chose {instance_id!r}, which is draining"
            )
