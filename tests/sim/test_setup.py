"""`SimSetup` holds the instances' `SchedulerConfig`: the deployment sets each role, DistServe's
budget holds the longest prompt, and results files echo the same keys as before."""

from __future__ import annotations

import dataclasses

import pytest

from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.sim import Deployment, SimSetup
from hyperflexis.sim.setup import build_parts
from hyperflexis.workloads import RequestSpec

from .helpers import workload

PD = Deployment(num_prefill=1, num_decode=1)


def test_echo_keeps_its_keys_and_values() -> None:
    scheduler = SchedulerConfig(max_num_batched_tokens=1024, admission_control=True)
    echo = SimSetup(scheduler=scheduler).echo()
    assert echo == {
        "hardware": "h100",
        "model": "llama-3.1-8b",
        "num_mixed": 4,
        "num_prefill": 0,
        "num_decode": 0,
        "policy": "hyperflexis",
        "dispatch": "hyperflexis",
        "latency_model": "analytic",
        "profile_path": None,
        "admission_control": True,
        "max_num_batched_tokens": 1024,
        "tpot_margin": 0.05,
        "prefill_rate_margin": 0.2,
        "late_age_factor": 0.0,
        "shed_order": "priority",
        "oversize_load": 0.0,
        "memory_fraction": 0.9,
        "block_size": 16,
        "num_kv_blocks": None,
        "fast_forward": True,
        "step_noise_cv": 0.0,
        "profile_error": 0.0,
        "noise_seed": 0,
        "decode_step_noise_cv": None,
        "decode_profile_error": None,
        "response_latency_s": 0.0,
        "charge_profile_path": None,
    }


def test_a_setup_may_fix_the_instances_kv_blocks_as_a_live_instance_has_them() -> None:
    assert build_parts(SimSetup(), workload(5)).num_kv_blocks > 10_000  # an H100's
    assert build_parts(SimSetup(num_kv_blocks=512), workload(5)).num_kv_blocks == 512


def test_the_instances_get_the_setups_scheduler_config() -> None:
    scheduler = SchedulerConfig(tpot_margin=0.1, max_num_seqs=32, admission_control=True)
    parts = build_parts(SimSetup(deployment=PD, scheduler=scheduler), workload(5))
    assert parts.config == dataclasses.replace(scheduler, role="prefill")
    assert parts.dispatcher.admission_control


def test_distserve_follows_the_budget_and_grows_it_only_to_hold_the_longest_prompt() -> None:
    long_prompt = [RequestSpec("r0", 0.0, 20000, 10, "standard")]
    parts = build_parts(SimSetup(policy="distserve"), long_prompt)
    assert parts.config.max_num_batched_tokens == 20001
    for budget in (2048, 8192):
        config = SchedulerConfig(max_num_batched_tokens=budget)
        setup = SimSetup(policy="distserve", scheduler=config)
        assert build_parts(setup, workload(5)).config.max_num_batched_tokens == budget


def test_the_role_is_the_deployments() -> None:
    with pytest.raises(ValueError, match=r"scheduler\.role"):
        SimSetup(scheduler=SchedulerConfig(role="decode"))


def test_the_ablations_run_behind_the_hyperflexis_dispatcher() -> None:
    for policy in ("hyperflexis-no-budget", "hyperflexis-no-prioritise", "hyperflexis-no-shed"):
        assert SimSetup(policy=policy).dispatcher_name == "hyperflexis"
    assert SimSetup(policy="edf-drop").dispatcher_name == "round-robin"
