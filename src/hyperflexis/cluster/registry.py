"""Dispatcher registry: names are what configs and `--help` show."""

from __future__ import annotations

from hyperflexis.cluster.dispatcher import Dispatcher
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import SchedulerConfig

_DISPATCHERS: dict[str, type[Dispatcher]] = {}


def register_dispatcher(cls: type[Dispatcher]) -> type[Dispatcher]:
    if cls.name in _DISPATCHERS:
        raise ValueError(f"dispatcher {cls.name!r} is registered twice")
    _DISPATCHERS[cls.name] = cls
    return cls


def dispatcher_names() -> list[str]:
    return sorted(_DISPATCHERS)


def make_dispatcher(
    name: str,
    cost_model: StepCostModel,
    scheduler_config: SchedulerConfig,
    admission_control: bool = False,
) -> Dispatcher:
    try:
        cls = _DISPATCHERS[name]
    except KeyError:
        known = ", ".join(dispatcher_names())
        raise ValueError(f"unknown dispatcher {name!r}; known: {known}") from None
    return cls(cost_model, scheduler_config, admission_control)
