"""The scaler interface: the driver feeds it observations and asks it for decisions every control
interval. Subclasses register by `name` (see `registry`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.cluster.scaler.actions import ActionBuilder
from hyperflexis.cluster.scaler.decision import ClusterView, ScalingDecision, WeightSource
from hyperflexis.cluster.scaler.observe import DemandObserver, FinishedRequest
from hyperflexis.cluster.scaler.startup import StartupModel
from hyperflexis.cluster.scaler.tracker import TransitionTracker
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.perf.base import StepCostModel
from hyperflexis.perf.registry import make_cost_model
from hyperflexis.perf.specs import (
    HardwareSpec,
    ModelSpec,
    hardware_spec,
    kv_cache_tokens,
    model_spec,
)
from hyperflexis.scheduler.config import SchedulerConfig


@dataclass(frozen=True, slots=True)
class ScalerContext:
    """What every scaler knows of the deployment it sizes (one model on one accelerator type)."""

    hardware: HardwareSpec  # accelerator: bandwidths for start-up, price for cost
    model: ModelSpec  # the served model: weight bytes, KV bytes per token
    cost_model: StepCostModel  # the instances' step latency model
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)  # their limits
    kv_cache_tokens: int | None = None  # KV tokens per instance; None: from the specs
    init_s: float = 3.0  # start-up work besides loading weights (allocator, KV cache, graphs)
    peer_weights: bool = True  # new instances copy weights from a live peer; False: from disk

    @classmethod
    def of(
        cls, hardware: str, model: str, cost_model: StepCostModel | None = None, **kwargs: Any
    ) -> ScalerContext:
        """From registry names; the cost model defaults to the analytic roofline."""
        hw, spec = hardware_spec(hardware), model_spec(model)
        if cost_model is None:
            cost_model = make_cost_model("analytic", hardware=hw, model=spec)
        return cls(hw, spec, cost_model, **kwargs)

    @property
    def instance_kv_tokens(self) -> int:
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens
        return max(kv_cache_tokens(self.hardware, self.model), 1)


class Scaler(ABC):
    """Decides scale-out, scale-in and role switches from what it observed. Pure: `now` comes
    from the driver, and decisions are returned, never applied here."""

    name: ClassVar[str]
    config_type: ClassVar[type[Any] | None] = None  # its settings dataclass; None: it has none

    def __init__(self, context: ScalerContext, config: Any = None) -> None:
        self.context = context
        self.observer = DemandObserver(*self._window())
        self.tracker = TransitionTracker()
        self.startup = StartupModel(
            context.hardware, context.model, context.init_s, peer_copy=context.peer_weights
        )
        self.actions = ActionBuilder(self.startup)

    def _window(self) -> tuple[float, float]:
        """(window_s, bin_s) of the observer."""
        return 60.0, 5.0

    def observe_arrival(self, now: float, request: DispatchRequest) -> None:
        self.observer.observe_arrival(now, request)

    def observe_finish(self, now: float, record: FinishedRequest) -> None:
        self.observer.observe_finish(now, record)

    def observe_startup(self, source: WeightSource, startup_s: float) -> None:
        """A new instance with weights from `source` served `startup_s` after its decision:
        from then on the start-up model predicts what such starts measured."""
        self.startup.record(source, startup_s)

    def observe_snapshots(self, now: float, snapshots: Iterable[LoadSnapshot]) -> None:
        self.observer.observe_snapshots(now, snapshots)

    def decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        """The actions to take now. Never acts on an instance that is starting, draining or
        already the subject of an earlier decision the view does not reflect yet."""
        self.tracker.sync(now, view)
        self.observer.observe_snapshots(now, view.snapshots())
        self.observer.forget(i.instance_id for i in view.instances)
        decisions = self._decide(now, view)
        self.tracker.record(now, decisions)
        return decisions

    @abstractmethod
    def _decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        """The policy proper; the tracker is already in sync with `view`."""
