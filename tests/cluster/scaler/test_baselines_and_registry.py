"""The static and threshold baselines, and the scaler registry."""

from __future__ import annotations

import pytest

from hyperflexis.cluster.links import LinkTable
from hyperflexis.cluster.scaler import (
    ClusterView,
    HyperFlexisScalerConfig,
    InstanceView,
    NoRoleSwitchScaler,
    PoolLimits,
    StaticScaler,
    ThresholdScaler,
    ThresholdScalerConfig,
    make_scaler,
    register_scaler,
    scaler_names,
)
from tests.cluster.scaler.helpers import MODEL, STANDARD, Traffic, context, scaler, snapshot, view


def _instances(role: str, count: int, **load: float) -> list[InstanceView]:
    return [
        InstanceView(
            f"{role}-{k}",
            role,  # type: ignore[arg-type]
            "active",
            MODEL,
            snapshot=snapshot(f"{role}-{k}", role, **load),  # type: ignore[arg-type]
        )
        for k in range(count)
    ]


def test_static_never_acts() -> None:
    s = scaler("static")
    assert isinstance(s, StaticScaler)
    traffic = Traffic(s)
    busy = _instances("mixed", 2, num_waiting=50, kv_usage=0.99)
    for step in range(20):
        now = step * 10.0
        traffic.run(now, lambda t: 100.0, lambda t: (1000, 200, STANDARD))
        assert s.decide(now, view(busy, mixed=(1, 8))) == []
        assert s.decide(now + 1, view(_instances("mixed", 6), mixed=(1, 8))) == []


def test_threshold_scales_out_on_queue_or_kv_then_waits_out_its_cooldown() -> None:
    s = scaler("threshold", ThresholdScalerConfig(queue_high=4, cooldown_s=60))
    queued = view(_instances("mixed", 2, num_waiting=5), mixed=(1, 8))
    first = s.decide(0.0, queued)
    assert [(d.kind, d.role) for d in first] == [("scale_out", "mixed")]
    assert "5.00 waiting per instance" in first[0].reason
    assert s.decide(30.0, queued) == []  # cooldown
    full = view(_instances("mixed", 3, kv_usage=0.9), mixed=(1, 8))
    assert [d.kind for d in s.decide(61.0, full)] == ["scale_out"]


def test_threshold_scales_in_when_both_low_never_below_minimum() -> None:
    s = scaler("threshold", ThresholdScalerConfig(cooldown_s=60))
    idle = _instances("mixed", 2)
    assert [d.kind for d in s.decide(0.0, view(idle, mixed=(1, 8)))] == ["scale_in"]
    # The driver applied it: one active left, at the minimum.
    assert s.decide(100.0, view(idle[1:], mixed=(1, 8))) == []
    # Busy compute (200 of 256 sequences) but no queue: between the marks, no action.
    busy = view(_instances("mixed", 3, num_running=200), mixed=(1, 8))
    assert s.decide(200.0, busy) == []


def test_threshold_never_switches_roles_and_sizes_each_pool_alone() -> None:
    s = scaler("threshold")
    instances = _instances("prefill", 3) + _instances("decode", 1, kv_usage=0.95)
    decisions = s.decide(0.0, view(instances, prefill=(1, 8), decode=(1, 8)))
    assert sorted((d.kind, d.role) for d in decisions) == [
        ("scale_in", "prefill"),
        ("scale_out", "decode"),
    ]
    new_decode = next(d for d in decisions if d.kind == "scale_out")
    # Linked to the prefill instances that stay, before it takes traffic.
    assert {p for p, _ in new_decode.links_to_add} == {"prefill-1", "prefill-2"}


def test_registry_names_and_failures() -> None:
    assert scaler_names() == ["hyperflexis", "no-role-switch", "static", "threshold"]
    with pytest.raises(ValueError, match="known: hyperflexis, no-role-switch, static, threshold"):
        make_scaler("hpa", context())
    with pytest.raises(ValueError, match="registered twice"):
        register_scaler(ThresholdScaler)
    with pytest.raises(ValueError, match="ThresholdScalerConfig"):
        make_scaler("threshold", context(), HyperFlexisScalerConfig())
    with pytest.raises(ValueError, match="no settings"):
        make_scaler("static", context(), ThresholdScalerConfig())
    ablation = make_scaler("no-role-switch", context(), HyperFlexisScalerConfig(headroom=0.2))
    assert isinstance(ablation, NoRoleSwitchScaler)
    assert not ablation.config.role_switch and ablation.config.headroom == 0.2


def test_configs_reject_invalid_fields() -> None:
    with pytest.raises(ValueError, match="scale_in_headroom"):
        HyperFlexisScalerConfig(scale_in_headroom=-0.1)
    with pytest.raises(ValueError, match="calm_headroom"):
        HyperFlexisScalerConfig(headroom=0.1, calm_headroom=0.2)
    with pytest.raises(ValueError, match="calm_headroom"):
        HyperFlexisScalerConfig(calm_headroom=-0.1)
    assert HyperFlexisScalerConfig(calm_headroom=None).calm_headroom is None
    with pytest.raises(ValueError, match="target_attainment"):
        HyperFlexisScalerConfig(target_attainment=1.5)
    with pytest.raises(ValueError, match="queue_low"):
        ThresholdScalerConfig(queue_low=5, queue_high=4)


def test_decisions_announce_the_links_the_drivers_table_will_make() -> None:
    table = LinkTable.build(["prefill-0", "prefill-1", "prefill-2"], ["decode-0"], "balanced", 1)
    before = table.links()
    instances = _instances("prefill", 3, num_waiting=9) + _instances("decode", 1, kv_usage=0.95)
    pools = {"prefill": PoolLimits(1, 8), "decode": PoolLimits(1, 8)}
    s = scaler("threshold")
    decisions = s.decide(0.0, ClusterView(tuple(instances), pools, link_table=table))
    assert table.links() == before  # the view's table is only read
    assert [(d.kind, d.role) for d in decisions] == [
        ("scale_out", "decode"),
        ("scale_out", "prefill"),
    ]
    for d in decisions:  # the driver applies them in order on its own table
        old = {(p, x) for p, xs in table.links().items() for x in xs}
        (table.add_decode if d.role == "decode" else table.add_prefill)(d.instance_id)
        new = {(p, x) for p, xs in table.links().items() for x in xs}
        assert set(d.links_to_add) == new - old and set(d.links_to_remove) == old - new
    new_decode = decisions[0].instance_id
    assert any(x == new_decode for _, x in decisions[0].links_to_add)  # linked before traffic
