"""An instance killed (SIGKILL) or frozen (SIGSTOP) under load: no request is lost, the survivor
serves, the instance is replaced (its weights mapped from the survivor's published copy), and
/health reports the change.

Which request runs where is read from /debug/instances (each instance's `num_dispatched`) as the
test sends them one by one, so every assertion is about a request whose instance is known.
Requests that have streamed nothing when their instance fails are dispatched again and complete;
those that have streamed continue elsewhere (`ResumeRequest`) with nothing repeated: the client
gets exactly an undisturbed run's text (greedy).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.live import is_running, wait_until
from tests.server.reliability.quiet import Served, assert_quiescent, serve
from tests.server.reliability.sse import Outcome, Sent, request

INSTANCE_TIMEOUT_S = 1.5
LONG_TOKENS = 250  # long enough to still run when its instance fails
PROMPT = "Every morning the fishermen"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("faults-server")
    args = ["--model", str(server_model_dir), "--profile", str(fixed_profile)]
    args += ["--instance-timeout-s", str(INSTANCE_TIMEOUT_S), "--dispatch", "least-loaded"]
    args += ["--peer-weights"]  # replacements map the survivor's published weights
    with serve(args, tmp, num_instances=2) as live:
        yield live


def _long(stream: bool = True) -> dict[str, Any]:
    body = {"prompt": PROMPT, "max_tokens": LONG_TOKENS, "ignore_eos": True, "temperature": 0}
    return {**body, "stream": stream}


def _dispatched(served: Served) -> dict[str, int]:
    return {str(r["instance_id"]): int(str(r["num_dispatched"])) for r in served.live.instances()}


def _send_tracked(served: Served, body: dict[str, Any]) -> tuple[Sent, str]:
    """Send one request and return it with the instance it went to."""
    before = _dispatched(served)
    sent = Sent(served.url, body)
    found: list[str] = []

    def moved() -> bool:
        after = _dispatched(served)
        found[:] = [i for i in after if after[i] > before.get(i, 0)]
        return bool(found)

    wait_until(moved, "the request to be dispatched")
    return sent, found[0]


def _assert_continued(outcome: Outcome, reference: str) -> None:
    """A stream whose instance failed after it streamed: the same text as an undisturbed run."""
    assert outcome.complete and outcome.done and outcome.text == reference, outcome


def _reference(served: Served) -> str:
    outcome = request(served.url, _long(stream=False))
    assert outcome.complete, outcome
    return outcome.text


def _wait_replaced(served: Served, instance_id: str, old_pid: int) -> None:
    def replaced() -> bool:
        status, body = served.health()
        pid = served.live.instance_pids().get(instance_id)
        return status == 200 and body["status"] == "ok" and pid not in (None, old_pid)

    wait_until(replaced, f"{instance_id} to be replaced", timeout_s=60)
    assert not is_running(old_pid)


def test_sigkill_under_load(served: Served) -> None:
    assert_quiescent(served)
    reference = _reference(served)
    first, victim = _send_tracked(served, _long())
    first.wait_first_event()
    other, survivor = _send_tracked(served, _long())
    assert survivor != victim, "least-loaded sends the second stream to the other instance"
    other.wait_first_event()
    pid = served.live.instance_pids()[victim]
    # Frozen for a moment (well within the timeout), a request sent to it streams nothing.
    os.kill(pid, signal.SIGSTOP)
    before = _dispatched(served)[victim]
    queued = [Sent(served.url, {"prompt": PROMPT, "max_tokens": 8}) for _ in range(4)]
    wait_until(lambda: _dispatched(served)[victim] > before, "a request sent to the frozen one")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: served.health()[1]["status"] != "ok", "/health to see it")
    status, body = served.health()
    assert status == 200 and body["status"] == "degraded" and body["num_instances"] == 1
    states = {row["instance_id"]: row["state"] for row in body["instances"]}
    assert states == {victim: "starting", survivor: "ready"}
    for sent in queued:  # dispatched again: complete, whichever instance they had
        outcome = sent.result()
        assert outcome.complete and outcome.num_completion_tokens == 8, outcome
    _assert_continued(first.result(), reference)
    survived = other.result()
    assert survived.complete and survived.text == reference, survived
    _wait_replaced(served, victim, pid)
    rows = {str(r["instance_id"]): r for r in served.live.instances()}
    assert rows[victim]["weight_source"] == "peer", rows[victim]  # no disk load
    # Both serve an undisturbed run's text, the replacement on the survivor's weights.
    again, one = _send_tracked(served, _long())
    again.wait_first_event()
    more, two = _send_tracked(served, _long())
    assert {one, two} == {victim, survivor}
    assert again.result().text == reference and more.result().text == reference
    assert_quiescent(served)


def test_sigstop_is_noticed_and_the_instance_killed(served: Served) -> None:
    assert_quiescent(served)
    reference = _reference(served)
    first, victim = _send_tracked(served, _long())
    first.wait_first_event()
    other, _ = _send_tracked(served, _long())
    other.wait_first_event()
    pid = served.live.instance_pids()[victim]
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    late = Sent(served.url, {"prompt": PROMPT, "max_tokens": 8})
    wait_until(lambda: not is_running(pid), "the frozen instance to be killed", timeout_s=30)
    noticed_s = time.monotonic() - frozen_at
    assert INSTANCE_TIMEOUT_S <= noticed_s < INSTANCE_TIMEOUT_S + 5.0, noticed_s
    outcome = late.result()
    assert outcome.complete and outcome.num_completion_tokens == 8, outcome
    _assert_continued(first.result(), reference)
    survived = other.result()
    assert survived.complete and survived.text == reference, survived
    _wait_replaced(served, victim, pid)
    assert_quiescent(served)


def test_a_resumed_stream_repeats_nothing(served: Served) -> None:
    """Killed after some tokens, the stream goes on elsewhere: the client's text and token count
    are exactly an undisturbed run's (greedy)."""
    assert_quiescent(served)
    reference = _reference(served)
    sent, victim = _send_tracked(served, {**_long(), "stream_options": {"include_usage": True}})
    sent.wait_first_event()
    pid = served.live.instance_pids()[victim]
    os.kill(pid, signal.SIGKILL)
    outcome = sent.result()
    assert outcome.complete and outcome.done and outcome.text == reference, outcome
    assert outcome.num_completion_tokens == LONG_TOKENS
    _wait_replaced(served, victim, pid)
    assert_quiescent(served)
