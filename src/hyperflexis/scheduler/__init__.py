"""The instance scheduler: shared state and bookkeeping (`base`), policies in a registry."""

from hyperflexis.scheduler import policies as _policies  # registers the policies
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.config import ROLES, Role, SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager, num_blocks_for
from hyperflexis.scheduler.output import ScheduledChunk, SchedulerOutput
from hyperflexis.scheduler.registry import make_scheduler, policy_class, policy_names
from hyperflexis.scheduler.step_budget import step_gap_bound_s

del _policies

__all__ = [
    "ROLES",
    "KVBlockManager",
    "Role",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "make_scheduler",
    "num_blocks_for",
    "policy_class",
    "policy_names",
    "step_gap_bound_s",
]
