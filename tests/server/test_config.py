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


def test_p_d_instances_get_their_roles_in_order() -> None:
    config = ServerConfig(num_prefill=1, num_decode=2, link_policy="pairs")
    assert config.is_disaggregated
    assert config.instance_roles() == [
        ("prefill-0", "prefill"),
        ("decode-0", "decode"),
        ("decode-1", "decode"),
    ]
    assert ServerConfig(num_instances=2).instance_roles() == [
        ("instance-0", "mixed"),
        ("instance-1", "mixed"),
    ]
    with pytest.raises(ValueError, match="at least one of each"):
        ServerConfig(num_prefill=2)
    with pytest.raises(ValueError, match="'kv_transport'"):
        ServerConfig(num_prefill=1, num_decode=1, kv_transport="")


def test_scaling_keeps_each_pool_within_its_bounds() -> None:
    assert ServerConfig(num_instances=2, scaler="threshold", max_instances=3).scaler == "threshold"
    pd = ServerConfig(num_prefill=2, num_decode=1, scaler="hyperflexis", max_instances=2)
    assert pd.scaler == "hyperflexis"
    with pytest.raises(ValueError, match="min-instances"):
        ServerConfig(num_prefill=3, num_decode=1, scaler="static", max_instances=2)
    with pytest.raises(ValueError, match="min-instances"):
        ServerConfig(num_prefill=2, num_decode=1, scaler="static", min_instances=2)
    with pytest.raises(ValueError, match="drain-deadline"):
        ServerConfig(scaler="static", drain_deadline_s=-1)
    with pytest.raises(ValueError, match="min-instances"):
        ServerConfig(num_instances=3, scaler="static", max_instances=2)
    with pytest.raises(ValueError, match="min-instances"):
        ServerConfig(num_instances=1, scaler="static", min_instances=2)
    with pytest.raises(ValueError, match="control-interval"):
        ServerConfig(scaler="static", control_interval_s=0)
    with pytest.raises(ValueError, match="price_per_hour"):
        ServerConfig(price_per_hour=-1)
