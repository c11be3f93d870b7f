"""The global dispatcher's contract (DESIGN.md §5): where each new request goes, and in P/D mode
which linked decode instance takes a finished prefill. Pure decision code: it reads no clock and
gets every instance's state as `LoadSnapshot`s."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.core.slo import SLO
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import SchedulerConfig


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """What the dispatcher knows of a request."""

    request_id: str
    num_prompt_tokens: int
    max_tokens: int
    slo: SLO
    arrival_s: float


@dataclass(frozen=True, slots=True)
class DispatchDecision:
    """Where a request goes; `instance_id` None means rejected (503 with Retry-After)."""

    instance_id: str | None
    reason: str  # why, for logs and tests: "feasible", "displaces-less-important", ...
    predicted_ttft_s: float | None = None  # the dispatcher's estimate at the chosen instance


class Dispatcher(ABC):
    """Routes requests to instances. Subclasses are registered by `name`."""

    name: ClassVar[str]

    def __init__(
        self,
        cost_model: StepCostModel,
        scheduler_config: SchedulerConfig,
        admission_control: bool = False,
    ) -> None:
        self.cost_model = cost_model  # the instances' step latency model (homogeneous cluster)
        self.scheduler_config = scheduler_config  # the instances' scheduler settings
        self.admission_control = admission_control  # reject when nowhere is feasible

    @abstractmethod
    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        """Pick the instance (of role `mixed` or `prefill`) that takes a new request. Draining
        instances are never chosen."""

    def choose_decode(
        self,
        request: DispatchRequest,
        prefill_instance_id: str,
        snapshots: Sequence[LoadSnapshot],
        links: Mapping[str, frozenset[str]],
        now: float,
    ) -> DispatchDecision:
        """P/D: pick the decode instance for a finished prefill, among those linked to
        `prefill_instance_id` (`links[prefill] = decode ids`) and not draining. The default
        takes the linked decode instance with the most free KV."""
        candidates = linked_decode_snapshots(prefill_instance_id, snapshots, links)
        if not candidates:
            return DispatchDecision(None, "no-linked-decode-instance")
        best = max(candidates, key=lambda s: (s.num_free_blocks, s.instance_id))
        return DispatchDecision(best.instance_id, "most-free-kv")


def linked_decode_snapshots(
    prefill_instance_id: str,
    snapshots: Sequence[LoadSnapshot],
    links: Mapping[str, frozenset[str]],
) -> list[LoadSnapshot]:
    """The decode instances a finished prefill may go to: linked to it and not draining."""
    linked = links.get(prefill_instance_id, frozenset())
    return [
        s for s in snapshots if s.instance_id in linked and s.role == "decode" and not s.draining
    ]
