"""The cooldown counts from when the grown instance serves, not from the decision: a slow start
does not eat it, and the live run's flap (scale out, drain 8 s after ready, start again) is gone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hyperflexis.cluster.scaler import HyperFlexisScaler, HyperFlexisScalerConfig, InstanceView
from hyperflexis.cluster.scaler.cooldown import Cooldown
from hyperflexis.cluster.scaler.decision import ScalingDecision
from hyperflexis.cluster.snapshot import PendingPrefill
from tests.cluster.scaler.helpers import MODEL, MiniCluster, scaler, snapshot, view

INTERVAL_S = 5.0  # the live run's control interval
STARTUP_S = 12.0  # the live run's start: process, imports, weights (the spec predicts 3.04 s)


def _grow(kind: str, instance_id: str, now: float) -> ScalingDecision:
    return ScalingDecision(kind, "mixed", instance_id, now, "test")  # type: ignore[arg-type]


def test_cooldown_runs_from_the_first_view_that_shows_the_instance_serving() -> None:
    cooldown = Cooldown(cooldown_s=20.0)
    cooldown.record(10.0, [_grow("scale_out", "new", 10.0)])
    starting = InstanceView("new", "mixed", "starting", MODEL)
    for now in (10.0, 20.0, 30.0, 40.0):  # a 30 s start: the pool cools all along
        cooldown.sync(now, view([starting], mixed=(1, 4)))
        assert cooldown.is_cooling("mixed", now)
    cooldown.sync(45.0, view([replace(starting, state="active")], mixed=(1, 4)))
    assert cooldown.serving_since_s("mixed") == 45.0
    assert cooldown.is_cooling("mixed", 64.9) and not cooldown.is_cooling("mixed", 65.0)
    assert not cooldown.is_cooling("decode", 45.0)  # another pool never grew


def test_a_start_that_fails_counts_from_its_decision() -> None:
    cooldown = Cooldown(cooldown_s=20.0)
    cooldown.record(10.0, [_grow("scale_out", "new", 10.0)])
    cooldown.sync(10.0, view([], mixed=(1, 4)))  # not applied yet: still growing
    assert cooldown.is_cooling("mixed", 35.0)
    cooldown.sync(15.0, view([InstanceView("new", "mixed", "starting", MODEL)], mixed=(1, 4)))
    cooldown.sync(20.0, view([], mixed=(1, 4)))  # it left without serving
    assert cooldown.serving_since_s("mixed") == 10.0
    assert not cooldown.is_cooling("mixed", 30.0)


def test_a_role_switch_counts_once_it_serves_in_the_new_role() -> None:
    cooldown = Cooldown(cooldown_s=20.0)
    decision = ScalingDecision("role_switch", "decode", "p1", 10.0, "test", "prefill")
    cooldown.record(10.0, [decision])
    old_role = InstanceView("p1", "prefill", "active", MODEL)
    pools = {"prefill": (1, 4), "decode": (1, 4)}
    cooldown.sync(10.0, view([old_role], **pools))  # still serving prefill: not grown yet
    assert cooldown.is_cooling("decode", 31.0) and not cooldown.is_cooling("prefill", 10.0)
    cooldown.sync(32.0, view([replace(old_role, role="decode")], **pools))
    assert cooldown.serving_since_s("decode") == 32.0


def _backlog(instance_id: str, now: float, num_queued: int) -> InstanceView:
    """An active instance with `num_queued` 10k-token prefills due in 2 s (late work)."""
    due = tuple(
        PendingPrefill(deadline_s=now + 2.0, priority=1, work_tokens=10_000)
        for _ in range(num_queued)
    )
    queued = snapshot(instance_id, "mixed", now, num_waiting=num_queued, pending=due)
    return InstanceView(instance_id, "mixed", "active", MODEL, snapshot=queued)


def _run_live_like(backlog_at: tuple[float, ...]) -> MiniCluster:
    """One instance (pool 1..2), a backlog at each of `backlog_at` that needs a second, starts
    that take `STARTUP_S`, the scaler deciding every `INTERVAL_S` for 200 s."""
    s = scaler(config=HyperFlexisScalerConfig(control_interval_s=INTERVAL_S))
    assert isinstance(s, HyperFlexisScaler)
    cluster = MiniCluster.of({"mixed": 1}, mixed=(1, 2))
    cluster.startup_s = STARTUP_S
    for step in range(41):
        now = step * INTERVAL_S
        for instance_id, instance in cluster.instances.items():
            if instance.state != "starting":
                num_queued = 400 if now in backlog_at else 0
                queued = _backlog(instance_id, now, num_queued).snapshot
                cluster.instances[instance_id] = replace(instance, snapshot=queued)
        cluster.step(now, s)
    return cluster


def test_a_slow_start_does_not_eat_the_cooldown() -> None:
    # A backlog at 70 s starts a second instance; it serves from 82 s (first seen at 85 s).
    # Counted from the decision the pool shrank at 90 s, 8 s after the new one began to
    # serve; now not before it has served the whole cooldown.
    cluster = _run_live_like(backlog_at=(70.0,))
    kinds = [(d.time_s, d.kind) for d in cluster.log]
    assert kinds[0] == (70.0, "scale_out")
    ready_s = 70.0 + STARTUP_S
    seen_s = ready_s + (-ready_s % INTERVAL_S)  # the first interval that shows it serving
    cooldown_s = HyperFlexisScalerConfig().cooldown_s
    scale_in_s = next(t for t, kind in kinds if kind == "scale_in")
    assert scale_in_s >= seen_s + cooldown_s > ready_s + cooldown_s
    assert scale_in_s == pytest.approx(seen_s + cooldown_s)  # and no later than that


def test_the_live_flap_does_not_happen_again() -> None:
    # The live run: scale out, the new instance drained 8 s after it began to serve, and a
    # new one started when the backlog came back 5 s later. Now the pool holds both.
    cluster = _run_live_like(backlog_at=(70.0, 95.0))
    kinds = [(d.time_s, d.kind) for d in cluster.log]
    assert [k for _, k in kinds] == ["scale_out", "scale_in"]  # no second scale-out
    assert kinds[1][0] > 95.0  # two instances served the second backlog
