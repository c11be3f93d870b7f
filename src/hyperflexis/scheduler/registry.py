"""The policy registry: names are what configs and `--help` show; unknown or duplicate names fail
loudly."""

from __future__ import annotations

from hyperflexis.core.registry import Registry
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager

_POLICIES: Registry[type[Scheduler]] = Registry("scheduling policy")
register_policy = _POLICIES.register  # class decorator: add a policy under its `name`
policy_names = _POLICIES.names
policy_class = _POLICIES.get


def make_scheduler(
    name: str,
    config: SchedulerConfig,
    kv: KVBlockManager,
    cost_model: StepCostModel | None = None,
) -> Scheduler:
    return policy_class(name)(config, kv, cost_model)
