"""A role flip in place on a real engine (`backends/role_switch.RoleSwitch`): a drained prefill
instance becomes a decode one with a new scheduler over the same runner (weights, KV cache),
counters carried, and says so in a new `InstanceReady`; one with work or leased KV refuses."""

from __future__ import annotations

import os

import pytest

from hyperflexis.backends.messages import InstanceReady
from hyperflexis.backends.role_switch import RoleSwitch
from hyperflexis.cluster.snapshot import take_snapshot
from hyperflexis.core import SLO, SamplingParams
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.perf.registry import make_cost_model
from hyperflexis.scheduler import SchedulerConfig

pytest.importorskip("torch")


def test_a_drained_instance_switches_roles_in_place() -> None:
    spec = InstanceSpec(
        "p0",
        None,
        "hyperflexis",
        SchedulerConfig(role="prefill"),
        cost_model=make_cost_model("fixed"),
        kv_cache_bytes=4 << 20,
    )
    built = build_engine(spec)
    engine = built.engine
    snapshot = take_snapshot("p0", engine.scheduler, 0.0)
    ready = InstanceReady("p0", os.getpid(), 100, 100, snapshot, role="prefill",
                          start_phases_s={"weights_s": 1.0})  # fmt: skip
    switch = RoleSwitch(spec, built, ready)
    params = SamplingParams(temperature=0.0, max_tokens=4)
    request_id = engine.add_request([5, 6, 7, 8], params, slo=SLO(60.0, 10.0, 1))
    with pytest.raises(RuntimeError, match="not drained"):
        switch("decode")  # a request runs
    while engine.has_unfinished():
        engine.step()
    with pytest.raises(RuntimeError, match="not drained"):
        switch("decode")  # its KV is leased for a decode peer
    assert engine.release_lease(request_id)
    engine.scheduler.num_preemptions = 3
    runner, old = engine.runner, engine.scheduler
    flipped = switch("decode")
    assert flipped.role == "decode" and flipped.snapshot.role == "decode"
    assert flipped.start_phases_s["weights_s"] == 1.0 and flipped.start_phases_s["switch_s"] >= 0
    assert engine.scheduler is not old and engine.scheduler.config.role == "decode"
    assert engine.runner is runner and engine.scheduler.num_preemptions == 3
    kv = engine.scheduler.kv
    assert (kv.num_blocks, kv.num_free_blocks) == (old.kv.num_blocks, old.kv.num_blocks)
    assert switch("prefill").role == "prefill"
