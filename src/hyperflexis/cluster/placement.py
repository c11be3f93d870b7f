"""The cluster controller's records (`cluster.controller`): each instance's role and whether it
takes traffic, and each request's place in the cluster."""

from __future__ import annotations

from dataclasses import dataclass

from hyperflexis.cluster.controller_events import Stage
from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.scheduler.config import Role


@dataclass(slots=True)
class InstanceRecord:
    instance_id: str
    role: Role
    up: bool = True  # takes traffic for its role


@dataclass(slots=True)
class Placement:
    """One request's place in the cluster."""

    request: DispatchRequest
    stage: Stage
    instance_id: str  # where it runs now: its entry instance, then D once handed off
    prefill_id: str | None = None  # P/D: the instance that computed its prompt
    kv_source: str | None = None  # the instance whose leased KV it pulls (P, or a migration's)
    kv_held: bool = False  # `kv_source` still holds its KV under lease (not released, expired)
    has_first_token: bool = False
