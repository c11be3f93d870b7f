"""Weight sources and start-up times of new instances; the cost meter."""

from __future__ import annotations

import pytest

from hyperflexis.cluster.scaler import CostMeter, InstanceView, Scaler, StartupModel
from hyperflexis.perf import hardware_spec, model_spec
from tests.cluster.scaler.helpers import MODEL, STANDARD, Traffic, scaler, snapshot, view


def _scale_out_with(instances: list[InstanceView], s: Scaler | None = None):  # type: ignore[no-untyped-def]
    s = s or scaler()
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


def test_measured_starts_replace_the_spec_by_weight_source() -> None:
    startup = StartupModel(hardware_spec("h100"), model_spec(MODEL), init_s=3.0)
    spec_disk, basis = startup.startup_s("disk")
    assert basis == "spec" and spec_disk == pytest.approx(startup.weight_load_s("disk") + 3.0)
    startup.record("disk", 12.0)  # live on a CPU host: the process and its imports
    assert startup.startup_s("disk") == (12.0, "measured: 1 start from disk")
    assert startup.startup_s("peer")[1] == "spec"  # another source is still the spec's
    for seconds in (9.0, 40.0, 11.0, 13.0):  # one start slowed by a loaded machine
        startup.record("disk", seconds)
    assert startup.startup_s("disk") == (12.0, "measured: median of the last 5 starts from disk")
    for seconds in (20.0, 21.0, 22.0):  # conditions changed: the oldest starts drop out
        startup.record("disk", seconds)
    assert startup.startup_s("disk")[0] == 20.0  # of 11, 13, 20, 21, 22
    plan = startup.plan([])
    assert plan.startup_s == 20.0 and plan.weight_load_s == startup.weight_load_s("disk")
    with pytest.raises(ValueError, match="startup_s"):
        startup.record("disk", -1.0)


def test_a_scale_out_plans_with_the_measured_start_and_says_so() -> None:
    s = scaler()
    s.observe_startup("disk", 14.5)
    decision = _scale_out_with([InstanceView("new", "mixed", "starting", MODEL)], s)
    assert decision.startup_s == 14.5
    assert "serving in 14.50 s (measured: 1 start from disk)" in decision.reason
    # The look-ahead is one measured start-up and an interval.
    assert "forecast 24.5 s ahead" in decision.reason


def test_without_peer_copies_every_start_is_from_disk() -> None:
    startup = StartupModel(hardware_spec("h100"), model_spec(MODEL), peer_copy=False)
    plan = startup.plan([InstanceView("a", "mixed", "active", MODEL)])
    assert plan.weight_source == "disk" and plan.peer_id is None


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
