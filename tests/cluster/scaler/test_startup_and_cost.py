"""Weight sources and start-up times of new instances; the cost meter."""

from __future__ import annotations

import pytest

from hyperflexis.cluster.scaler import CostMeter, InstanceView, StartupModel
from hyperflexis.perf import hardware_spec, model_spec
from tests.cluster.scaler.helpers import MODEL, STANDARD, Traffic, scaler, snapshot, view


def _scale_out_with(instances: list[InstanceView]):  # type: ignore[no-untyped-def]
    s = scaler()
    traffic = Traffic(s)
    for now in (0.0, 10.0, 20.0):
        # 120 req/s fill ~4.1 instances: a 4th is needed even planned at the budget's floor.
        traffic.run(now, lambda t: 120.0, lambda t: (1000, 200, STANDARD))
        decisions = s.decide(now, view(instances, mixed=(1, 8)))
        if decisions:
            assert decisions[0].kind == "scale_out"
            return decisions[0]
    raise AssertionError("no scale-out")


def test_scale_out_copies_weights_from_a_live_peer_much_faster_than_from_disk() -> None:
    busy = snapshot("busy", "mixed", num_running=50)
    peer = _scale_out_with(
        [
            InstanceView("busy", "mixed", "active", MODEL, snapshot=busy),
            InstanceView("idle", "mixed", "active", MODEL),
            InstanceView("new", "mixed", "starting", MODEL),
        ]
    )
    assert peer.weight_source == "peer" and peer.peer_id == "idle"  # the least loaded peer
    disk = _scale_out_with([InstanceView("new", "mixed", "starting", MODEL)])
    assert disk.weight_source == "disk" and disk.peer_id is None
    assert peer.weight_load_s is not None and disk.weight_load_s is not None
    assert peer.startup_s is not None and disk.startup_s is not None
    # 16 GB over NVLink (370 GB/s) against NVMe (3 GB/s): over 50x less weight-loading time.
    assert disk.weight_load_s > 50 * peer.weight_load_s
    assert disk.startup_s > peer.startup_s + 5.0
    assert "weights from peer idle" in peer.reason


def test_startup_model_needs_a_live_instance_of_the_same_model() -> None:
    startup = StartupModel(hardware_spec("h100"), model_spec(MODEL), init_s=2.0)
    other_model = InstanceView("x", "mixed", "active", "qwen2.5-14b")
    draining = InstanceView("y", "mixed", "draining", MODEL, drain_target="stop")
    active = InstanceView("z", "mixed", "active", MODEL)
    assert startup.plan([other_model]).weight_source == "disk"
    assert startup.plan([other_model, draining]).peer_id == "y"  # still holds its weights
    assert startup.plan([draining, active]).peer_id == "z"  # an active peer is not leaving
    plan = startup.plan([])
    assert plan.startup_s == pytest.approx(plan.weight_load_s + 2.0)
    assert plan.weight_load_s == pytest.approx(model_spec(MODEL).weight_bytes / 3e9)


def test_cost_meter_integrates_instance_seconds_by_state() -> None:
    meter = CostMeter(price_per_hour=3.6)
    meter.update(0.0, {"active": 2})
    meter.update(100.0, {"active": 2, "starting": 1})
    meter.update(130.0, {"active": 3, "draining": 1})
    meter.update(200.0, {})
    assert meter.instance_seconds("active") == pytest.approx(2 * 130 + 3 * 70)
    assert meter.instance_seconds("starting") == pytest.approx(30)  # starting costs too
    assert meter.instance_seconds("draining") == pytest.approx(70)
    assert meter.instance_seconds() == pytest.approx(470 + 30 + 70)
    assert meter.cost_usd() == pytest.approx(570 / 3600 * 3.6)


def test_cost_meter_from_views_and_tensor_parallel_price() -> None:
    meter = CostMeter(price_per_hour=1.0, num_accelerators_per_instance=4)
    meter.update_from(0.0, [InstanceView("a", "mixed", "active", MODEL)])
    meter.update_from(3600.0, [])
    assert meter.cost_usd() == pytest.approx(4.0)


def test_cost_meter_rejects_bad_input() -> None:
    meter = CostMeter(price_per_hour=1.0)
    meter.update(10.0, {"active": 1})
    with pytest.raises(ValueError, match="now"):
        meter.update(5.0, {"active": 1})
    with pytest.raises(ValueError, match="unknown state"):
        meter.update(20.0, {"stopped": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="price_per_hour"):
        CostMeter(price_per_hour=-1.0)
