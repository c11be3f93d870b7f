"""`ServerConfig` holds every instance's `SchedulerConfig`; the server's instances are mixed."""

from __future__ import annotations

import pytest

from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.server.config import ServerConfig


def test_it_holds_the_scheduler_config() -> None:
    scheduler = SchedulerConfig(max_num_batched_tokens=512, admission_control=True)
    assert ServerConfig(scheduler=scheduler).scheduler is scheduler
    assert ServerConfig().scheduler == SchedulerConfig()


def test_instances_run_both_phases() -> None:
    with pytest.raises(ValueError, match=r"scheduler\.role"):
        ServerConfig(scheduler=SchedulerConfig(role="prefill"))
