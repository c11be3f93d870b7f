"""The elastic simulator's own events (DESIGN.md §6): the scaler's control ticks and the ends of
instance transitions, queued with the simulator's events (`ClusterSimulator.schedule`) in one
deterministic order.

At one instant: steps end (0), then instances that finished starting join and stopped ones leave
(1, with KV transfers), then the scaler decides and requests arrive (2, in push order), and steps
start last (3), so a step that starts at `t` sees every change made at `t`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class InstanceReady:
    """An instance finished starting (weights loaded) or switching roles: it is linked to its
    P/D partners, then takes traffic."""

    kind_order: ClassVar[int] = 1
    instance_index: int


@dataclass(frozen=True, slots=True)
class InstanceStopped:
    """A drained instance finished shutting down and releases its accelerator."""

    kind_order: ClassVar[int] = 1
    instance_index: int


@dataclass(frozen=True, slots=True)
class ControlTick:
    """The scaler's control interval: sample the cluster, decide, apply."""

    kind_order: ClassVar[int] = 2
