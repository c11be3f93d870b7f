"""The policy registry: names are what configs and `--help` show; unknown or duplicate names fail
loudly."""

from __future__ import annotations

from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager

_POLICIES: dict[str, type[Scheduler]] = {}


def register_policy(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: add a policy under its `name`."""
    if cls.name in _POLICIES:
        raise ValueError(f"scheduling policy {cls.name!r} is registered twice")
    _POLICIES[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    return sorted(_POLICIES)


def policy_class(name: str) -> type[Scheduler]:
    try:
        return _POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown scheduling policy {name!r}; known: {', '.join(policy_names())}"
        ) from None


def make_scheduler(
    name: str,
    config: SchedulerConfig,
    kv: KVBlockManager,
    cost_model: StepCostModel | None = None,
) -> Scheduler:
    return policy_class(name)(config, kv, cost_model)
