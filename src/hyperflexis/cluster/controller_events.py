"""What the cluster controller (`cluster.controller`) takes and returns (DESIGN.md §10): events in,
effects out, as plain dataclasses. A driver (the simulator on its virtual clock, the server on the
wall clock) turns what happens to its instances into events and executes the effects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.scheduler.config import Role

# -- events: what happened ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceStarting:
    """A new instance is starting (no traffic yet); instances rank in the order they start."""

    instance_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class InstanceUp:
    """An instance is ready (or flipped to `role`) and takes traffic for its role."""

    instance_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class InstanceDown:
    """An instance takes no traffic any more: left the cluster, or died with what it held."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class RequestArrived:
    """A new request, to route to a mixed or prefill instance."""

    request: DispatchRequest


@dataclass(frozen=True, slots=True)
class FirstToken:
    """The request's first token reached the client: it can no longer be dispatched again."""

    request_id: str


@dataclass(frozen=True, slots=True)
class PrefillDone:
    """P/D: a prefill instance computed the prompt and holds its KV ready (pinned, leased)."""

    request_id: str
    prefill_id: str


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """P/D: the decode instance pulled the KV (`ok`), or gave up and recomputes the prompt."""

    request_id: str
    ok: bool


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """P/D: the prefill instance freed the request's KV when its lease ran out."""

    request_id: str


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """The request finished (any reason) on the instance that held it; it is over."""

    request_id: str


@dataclass(frozen=True, slots=True)
class RequestAborted:
    """The client went away: stop the request wherever it is."""

    request_id: str


@dataclass(frozen=True, slots=True)
class DrainDue:
    """Event: `instance_id` is draining and must be empty by `deadline_s`; `seconds_left` is the
    driver's estimate, per streaming request on it, of the time it still needs there."""

    instance_id: str
    deadline_s: float
    seconds_left: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class MovedOut:
    """Event: the draining instance answered a `MoveOut`: the request stopped there with its
    first `num_kv_tokens` tokens' KV leased (0: none, the target recomputes), or, `moved`
    False, it was not decoding there and goes on as it was."""

    request_id: str
    instance_id: str
    moved: bool
    num_kv_tokens: int = 0


Event = (
    InstanceStarting
    | InstanceUp
    | InstanceDown
    | RequestArrived
    | FirstToken
    | PrefillDone
    | TransferEnded
    | LeaseExpired
    | RequestEnded
    | RequestAborted
    | DrainDue
    | MovedOut
)

# -- effects: what the driver does ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Send a new request to `instance_id`."""

    request_id: str
    instance_id: str
    reason: str  # the dispatcher's


@dataclass(frozen=True, slots=True)
class Reject:
    """No instance takes the request now (503 with Retry-After)."""

    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class HandOff:
    """P/D: `decode_id` continues the request; with `with_kv` it pulls the prompt's KV from
    `prefill_id` first, else (the KV is gone) it recomputes the prompt."""

    request_id: str
    prefill_id: str
    decode_id: str
    with_kv: bool = True


@dataclass(frozen=True, slots=True)
class Park:
    """P/D: no linked decode instance can take the request now; it waits, its KV leased on
    `prefill_id`, and is handed off when a decode instance comes up."""

    request_id: str
    prefill_id: str


@dataclass(frozen=True, slots=True)
class Release:
    """P/D: `prefill_id` may free the request's leased KV."""

    request_id: str
    prefill_id: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop the request on `instance_id` and free its KV there."""

    request_id: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class Redispatch:
    """The instance that held the request died before its first token: send it again, to
    `instance_id` (from the start), or fail it when None (nowhere can take it)."""

    request_id: str
    from_id: str
    instance_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Resume:
    """The instance that held the request died after its first token: `instance_id` continues
    it, recomputing the prompt and the output the client already has (nothing is repeated)."""

    request_id: str
    from_id: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The request cannot continue (the instance decoding it died): end it with an error."""

    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MoveOut:
    """Effect: stop the request on `instance_id` between two steps and lease its KV."""

    request_id: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class Migrate:
    """Effect: `to_id` continues the request, pulling its KV from `from_id` (`with_kv`) or
    recomputing its prompt and the output the client has."""

    request_id: str
    from_id: str
    to_id: str
    with_kv: bool = True


Effect = (
    Route
    | Reject
    | HandOff
    | Park
    | Release
    | Abort
    | Redispatch
    | Resume
    | Fail
    | MoveOut
    | Migrate
)

# Where a request is, for the controller.
Stage = Literal[
    "running",  # on a mixed instance
    "prefilling",  # on a prefill instance, no first token yet
    "parked",  # prefilled, KV leased on P, waiting for a decode instance
    "receiving",  # handed to D, which pulls the KV
    "decoding",  # D has the KV and decodes
    "recomputing",  # D recomputes the prompt (failed pull, or KV lost)
    "migrating",  # its draining instance is asked to stop it and lease its KV (a migration)
]
