"""Dispatcher registry: names are what configs and `--help` show."""

from __future__ import annotations

from hyperflexis.cluster.dispatcher import Dispatcher
from hyperflexis.core.registry import Registry
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import SchedulerConfig

_DISPATCHERS: Registry[type[Dispatcher]] = Registry("dispatcher")
register_dispatcher = _DISPATCHERS.register
dispatcher_names = _DISPATCHERS.names


def make_dispatcher(
    name: str,
    cost_model: StepCostModel,
    scheduler_config: SchedulerConfig,
    admission_control: bool = False,
) -> Dispatcher:
    return _DISPATCHERS.get(name)(cost_model, scheduler_config, admission_control)
