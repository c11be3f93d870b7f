"""Request migration off a draining instance (DESIGN.md §10.3), the cluster controller's part:
pure, as the rest of `cluster.controller`; the driver measures, the controller decides.

    decoding on S (draining) --DrainDue: would outlive the deadline--> migrating (MoveOut to S)
        --MovedOut(moved)--> receiving on T, pulling S's leased KV (Migrate) --TransferEnded--> ...
                       \\--(not moved: finished or still receiving)--> as it was

A request moves only once it has streamed, and only when another instance of a decoding role
(`decode` in P/D, `mixed` collocated) can take it: T is the decode instance the dispatcher picks
(`choose_decode`, every candidate linked to S), collocated the one with the most free KV. S pins
the request's KV under a lease as a prefill instance does, so the pull, its failure (recompute on
T), the release of S's blocks and an abort meanwhile take the P/D hand-off's paths unchanged.

A request that has streamed nothing by the deadline (queued, or its prompt still computing) is
aborted there and dispatched again, when another instance takes it: the client has seen nothing,
so nothing repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hyperflexis.cluster.controller_events import (
    Abort,
    DrainDue,
    Effect,
    Migrate,
    MovedOut,
    MoveOut,
    Redispatch,
    Release,
)
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.placement import InstanceRecord, Placement
from hyperflexis.cluster.snapshot import LoadSnapshot

# Stages of a request that decodes where it is (has streamed, not waiting for KV).
MOVABLE_STAGES = ("running", "decoding", "recomputing")
# A drain's deadline after its decision, the server's and the simulator's default: what would
# decode longer than this on the draining instance moves elsewhere.
DEFAULT_DRAIN_DEADLINE_S = 5.0


class Controller(Protocol):
    """What migration reads and changes of the cluster controller."""

    dispatcher: Dispatcher
    instances: dict[str, InstanceRecord]
    requests: dict[str, Placement]
    num_migrations: int

    def snapshots(self, instance_ids: Sequence[str], now: float) -> Sequence[LoadSnapshot]: ...

    def route(self, now: float, request: DispatchRequest) -> tuple[str | None, str]: ...

    def placement_for(self, request: DispatchRequest, instance_id: str) -> Placement: ...


def drain_due(controller: Controller, now: float, event: DrainDue) -> list[Effect]:
    """The requests on a draining instance that would outlive its deadline and can go
    elsewhere: each is asked to stop there (`MoveOut`)."""
    effects: list[Effect] = []
    on_it = [(r, p) for r, p in controller.requests.items() if p.instance_id == event.instance_id]
    for request_id, placement in on_it:
        if not placement.has_first_token:
            if now >= event.deadline_s and placement.stage in ("running", "prefilling"):
                effects += _dispatch_again(controller, now, request_id, placement)
            continue
        left_s = event.seconds_left.get(request_id)
        if placement.stage not in MOVABLE_STAGES or left_s is None:
            continue
        if now + left_s <= event.deadline_s or target(controller, now, placement) is None:
            continue
        placement.stage = "migrating"
        effects.append(MoveOut(request_id, event.instance_id))
    return effects


def _dispatch_again(
    controller: Controller, now: float, request_id: str, placement: Placement
) -> list[Effect]:
    """Past the deadline, a request that has streamed nothing is aborted where it waits and
    dispatched again from the start, if another instance takes it."""
    instance_id, reason = controller.route(now, placement.request)
    if instance_id is None:
        return []
    controller.requests[request_id] = controller.placement_for(placement.request, instance_id)
    from_id = placement.instance_id
    return [Abort(request_id, from_id), Redispatch(request_id, from_id, instance_id, reason)]


def moved_out(controller: Controller, now: float, event: MovedOut) -> list[Effect]:
    """Where a request stopped on its draining instance goes on: `Migrate` to the target (back
    to the same instance, recomputing, if no other can take it any more)."""
    placement = controller.requests.get(event.request_id)
    held = event.moved and event.num_kv_tokens > 0
    if placement is None or placement.stage != "migrating":
        # Aborted meanwhile (the abort went to the instance, which freed what it held).
        return [Release(event.request_id, event.instance_id)] if held else []
    if not event.moved:
        placement.stage = "decoding" if placement.prefill_id is not None else "running"
        return []
    to_id = target(controller, now, placement) or event.instance_id
    if to_id == event.instance_id:
        held = False  # nowhere else: it recomputes where it was, and its lease goes
    placement.instance_id = to_id
    placement.kv_source = event.instance_id
    placement.kv_held = held
    placement.stage = "receiving" if held else "recomputing"
    controller.num_migrations += 1
    effects: list[Effect] = [Migrate(event.request_id, event.instance_id, to_id, held)]
    if event.moved and event.num_kv_tokens > 0 and not held:
        effects.append(Release(event.request_id, event.instance_id))
    return effects


def seconds_left(
    num_output_tokens: int, max_tokens: int, decoding_s: float, tpot_s: float
) -> float:
    """A driver's estimate for `DrainDue`: how long a streaming request still needs where it
    is, at its pace so far (`decoding_s` since its first token; its SLO's `tpot_s` until it
    has two), for the rest of its `max_tokens`, as an EOS may never come."""
    pace_s = decoding_s / (num_output_tokens - 1) if num_output_tokens > 1 else tpot_s
    return max(0, max_tokens - num_output_tokens) * pace_s


def target(controller: Controller, now: float, placement: Placement) -> str | None:
    """The instance a request on a draining instance would move to, or None."""
    from_id = placement.instance_id
    role = controller.instances[from_id].role
    allowed = [
        r.instance_id
        for r in controller.instances.values()
        if r.up and r.role == role and r.instance_id != from_id
    ]
    snapshots = [s for s in controller.snapshots(allowed, now) if not s.draining]
    if not snapshots:
        return None
    if role == "decode":
        links = {from_id: frozenset(s.instance_id for s in snapshots)}
        choice = controller.dispatcher.choose_decode(
            placement.request, from_id, snapshots, links, now
        )
        return choice.instance_id
    return max(snapshots, key=lambda s: (s.num_free_blocks, s.instance_id)).instance_id
