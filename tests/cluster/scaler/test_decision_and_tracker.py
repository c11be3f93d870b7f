"""The scaler's contracts and the bookkeeping of instances in transition."""

from __future__ import annotations

import dataclasses

import pytest

from hyperflexis.cluster.scaler import ClusterView, InstanceView, PoolLimits, ScalingDecision
from hyperflexis.cluster.scaler.tracker import TransitionTracker, flipped
from tests.cluster.scaler.helpers import MODEL, view


def test_contracts_validate_and_are_frozen() -> None:
    decision = ScalingDecision("scale_in", "mixed", "a", 0.0, "idle")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.role = "decode"  # type: ignore[misc]
    with pytest.raises(ValueError, match="drain_target"):
        InstanceView("a", "mixed", "draining", MODEL)
    with pytest.raises(ValueError, match="drain_target"):
        InstanceView("a", "mixed", "draining", MODEL, drain_target="flip")
    with pytest.raises(ValueError, match="state"):
        InstanceView("a", "mixed", "stopped", MODEL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_instances"):
        PoolLimits(min_instances=3, max_instances=2)
    a = InstanceView("a", "mixed", "active", MODEL)
    with pytest.raises(ValueError, match="duplicate"):
        ClusterView((a, a), {"mixed": PoolLimits()})
    with pytest.raises(ValueError, match="no pool"):
        ClusterView((a,), {"prefill": PoolLimits()})
    with pytest.raises(ValueError, match="no pool for role"):
        ClusterView((a,), {"mixed": PoolLimits()}).limits("decode")
    with pytest.raises(ValueError, match="cannot switch"):
        flipped("mixed")


def test_tracker_counts_pools_as_they_will_be_and_forgets_applied_actions() -> None:
    instances = [
        InstanceView("p0", "prefill", "active", MODEL),
        InstanceView("p1", "prefill", "active", MODEL),
        InstanceView("p2", "prefill", "draining", MODEL, drain_target="flip"),
        InstanceView("d0", "decode", "starting", MODEL),
        InstanceView("d1", "decode", "draining", MODEL, drain_target="stop"),
    ]
    tracker = TransitionTracker()
    before = view(instances, prefill=(1, 4), decode=(1, 4))
    assert tracker.planned_members(before) == {"prefill": ["p0", "p1"], "decode": ["p2", "d0"]}
    tracker.record(
        0.0,
        [
            ScalingDecision("role_switch", "decode", "p0", 0.0, "", from_role="prefill"),
            ScalingDecision("scale_out", "prefill", "new", 0.0, ""),
        ],
    )
    assert not tracker.is_free(instances[0]) and tracker.is_free(instances[1])
    assert not tracker.is_free(instances[3])  # starting
    assert tracker.planned_members(before) == {
        "prefill": ["p1", "new"],
        "decode": ["p0", "p2", "d0"],
    }
    with pytest.raises(ValueError, match="pending"):
        tracker.record(1.0, [ScalingDecision("scale_in", "prefill", "p0", 1.0, "")])
    # The driver applied both: p0 drains towards decode, `new` is starting.
    applied = [
        dataclasses.replace(instances[0], state="draining", drain_target="flip"),
        *instances[1:],
        InstanceView("new", "prefill", "starting", MODEL),
    ]
    tracker.sync(5.0, view(applied, prefill=(1, 4), decode=(1, 4)))
    assert tracker.pending_ids() == set()


def test_tracker_forgets_decisions_never_applied() -> None:
    tracker = TransitionTracker(expire_s=100.0)
    tracker.record(0.0, [ScalingDecision("scale_out", "mixed", "x", 0.0, "")])
    empty = view([], mixed=(0, 4))
    tracker.sync(50.0, empty)
    assert tracker.is_pending("x")
    tracker.sync(150.0, empty)
    assert not tracker.is_pending("x")
