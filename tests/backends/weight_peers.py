"""Helpers for the weight-source tests: instance processes that publish or load weights, a
greedy request served through an instance's pipes, and the tokens a disk-loaded engine gives."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hyperflexis import LLM
from hyperflexis.backends.local import InstanceHandle
from hyperflexis.backends.messages import AddRequest, InstanceFailed, InstanceReady, StepReport
from hyperflexis.backends.worker import run_instance
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.transfer import weights as weights_module

TIMEOUT_S = 60.0  # bound on every wait for an instance process
PROMPT = [5, 17, 42, 9, 101, 3]
MAX_TOKENS = 10
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
SLO_ = SLO(ttft_s=60.0, tpot_s=10.0)


def spec(instance_id: str, model: Path, **kwargs: Any) -> InstanceSpec:
    return InstanceSpec(instance_id, str(model), "fcfs", kv_cache_bytes=2 * 2**20, **kwargs)


def disk_tokens(model: Path) -> list[int]:
    """What a disk-loaded engine generates for PROMPT, greedily."""
    return list(LLM(model=model).generate([PROMPT], GREEDY)[0].outputs[0].token_ids)


def wait_ready(handle: InstanceHandle) -> InstanceReady:
    """The instance's start-up message; fails the test if it failed or stayed silent."""
    assert handle.reports.poll(TIMEOUT_S), f"{handle.instance_id} sent nothing"
    message = handle.reports.recv()
    assert not isinstance(message, InstanceFailed), message.message
    assert isinstance(message, InstanceReady), message
    handle.ready = message
    return message


def serve(handle: InstanceHandle) -> tuple[list[int], StepReport]:
    """PROMPT served greedily by the instance: its tokens and the last report (KV all free)."""
    handle.send(AddRequest("r", PROMPT, GREEDY, SLO_, time.monotonic()))
    tokens: list[int] = []
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert handle.reports.poll(max(0.0, deadline - time.monotonic())), "no report in time"
        report = handle.reports.recv()
        if not isinstance(report, StepReport):
            continue  # a heartbeat
        for delta in report.deltas:
            tokens += delta.token_ids
            if delta.finished:
                assert delta.finish_reason == "length", delta
                return tokens, report


def instance_pausing_after_its_check(
    spec: InstanceSpec, commands: Connection, reports: Connection, gate: Connection
) -> None:
    """An instance process whose peer load stops once its checksums pass, until `gate` says go:
    the test kills the publisher in that pause, before the load has confirmed its owner."""
    real_verify = weights_module._verify_digests

    def verify_then_wait(*args: Any) -> None:
        real_verify(*args)
        gate.send("checked")
        gate.recv()

    weights_module._verify_digests = verify_then_wait
    run_instance(spec, commands, reports)
