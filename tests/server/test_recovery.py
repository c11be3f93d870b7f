"""Recovery and failure detection in process, with the stand-ins of test_core (the controller's
own cases are in tests/cluster): a failed instance's requests resume or end; stale reports of a
failed instance are ignored; a timeout ends a request; silence past the timeout fails an
instance; the restart budget stops a crash loop; /health's status for each state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    OutputDelta,
    ResumeRequest,
    StepReport,
)
from hyperflexis.server.health import RestartBudget, Supervisor, health_report
from hyperflexis.server.protocol import parse_completion
from tests.server.scrape import has, value
from tests.server.test_core import FakeHandle, FakePool, _core, _snapshot


def _streamed(core: Any, pool: FakePool, text: str = "ab") -> Any:
    (stream,) = core.submit(parse_completion({"prompt": "x y", "max_tokens": 5}, {}), None, 0.0)
    delta = OutputDelta(stream.request_id, [7, 8], text, num_output_tokens=2)
    core.on_report(pool.handles["a"], StepReport("a", _snapshot("a"), [delta]))
    stream.queue.get_nowait()
    return stream


def test_a_resumed_request_ignores_what_its_old_instance_still_sends() -> None:
    core, pool, dispatcher = _core()
    stream = _streamed(core, pool)
    pool.handles["a"].alive = False
    dispatcher.answer = "b"
    core.on_exit(pool.handles["a"], "silent")
    (sent,) = pool.handles["b"].sent
    assert isinstance(sent, ResumeRequest) and sent.kv is None
    assert (sent.output_token_ids, sent.num_text_chars_sent) == ([7, 8], 2)
    assert sent.sampling_params.max_tokens == 5 and sent.ttft_s is not None
    # A report the failed instance sent before it was cut off changes nothing.
    late = OutputDelta(stream.request_id, [9], "c", num_output_tokens=3)
    core.on_report(pool.handles["a"], StepReport("a", _snapshot("a"), [late]))
    assert stream.queue.empty() and stream.instance_id == "b"


def test_with_no_instance_left_requests_end_with_an_error() -> None:
    core, pool, dispatcher = _core()
    streamed = _streamed(core, pool)
    (waiting,) = core.submit(parse_completion({"prompt": "x"}, {}), None, 0.0)
    for handle in pool.handles.values():
        handle.alive = False
    dispatcher.answer = None
    core.on_exit(pool.handles["a"], "exited")
    assert not core.streams and core.num_queued == 0
    ended = streamed.queue.get_nowait()
    assert ended.finish_reason == "error" and ended.error_status == 500
    refused = waiting.queue.get_nowait()
    assert refused.error_status == 503 and "instance a failed (exited)" in (refused.error or "")


def test_a_timeout_ends_the_request_with_a_503_and_frees_it_on_its_instance() -> None:
    core, pool, _ = _core()
    (stream,) = core.submit(parse_completion({"prompt": "x"}, {}), None, 0.0)
    core.fail([stream], "timed out", 503)
    core.fail([stream], "timed out", 503)  # once only
    delta = stream.queue.get_nowait()
    assert (delta.finish_reason, delta.error_status) == ("error", 503) and stream.queue.empty()
    assert [type(c) for c in pool.handles["a"].sent] == [AddRequest, AbortRequest]
    assert not core.streams and core.num_queued == 0


class _Process:
    exitcode: int | None = None


class _SupervisedPool(FakePool):
    def __init__(self) -> None:
        super().__init__()
        self.killed: list[str] = []
        self.replaced: list[str] = []
        for handle in self.handles.values():
            handle.last_heard_s = 0.0  # type: ignore[attr-defined]
            handle.process = _Process()  # type: ignore[attr-defined]
            handle.ready = SimpleNamespace(role="mixed", start_info=dict)

    def kill(self, handle: FakeHandle) -> None:
        handle.alive = False
        self.killed.append(handle.instance_id)

    def replace(self, instance_id: str) -> Any:
        self.replaced.append(instance_id)
        handle = self.handles[instance_id]  # as the pool's replacement: counted, not ready
        handle.num_restarts, handle.ready = handle.num_restarts + 1, None
        return SimpleNamespace(spec=SimpleNamespace(weight_source="disk"))


def test_silence_past_the_timeout_kills_recovers_and_replaces() -> None:
    core, _, _ = _core()
    pool = _SupervisedPool()
    core.pool = pool  # type: ignore[assignment]
    supervisor = Supervisor(core, instance_timeout_s=2.0, budget=RestartBudget(1, 60.0))
    pool.handles["b"].last_heard_s = 1.5  # type: ignore[attr-defined]
    assert supervisor.check(now=2.0) == []
    assert supervisor.check(now=3.0) == ["a"]  # b was heard 1.5 s ago
    assert pool.killed == ["a"] and pool.replaced == ["a"]
    text = core.metrics.render(0)[0].decode()
    assert value(text, "hyperflexis:instance_failures_total", engine="a") == 1
    assert value(text, "hyperflexis:instance_restarts_total", engine="a") == 1
    assert not has(text, "hyperflexis:instance_up", engine="a")  # dropped, not back at 0
    status, body = health_report(core)
    assert (status, body["status"], body["num_instances"]) == (200, "degraded", 1)
    assert [row["state"] for row in body["instances"]] == ["starting", "ready"]
    assert body["reason"] == "a is loading (a replacement after a failure)"
    # The replacement is ready: the controller routes to it again.
    pool.handles["a"].alive = True
    assert not core.handoff.controller.instances["a"].up
    supervisor.on_ready(pool.handles["a"])  # type: ignore[arg-type]
    assert core.handoff.controller.instances["a"].up
    # Out of budget: a's next failure is not replaced (b's first one is).
    supervisor.check(now=10.0)
    assert pool.replaced == ["a", "b"] and sorted(pool.killed) == ["a", "a", "b"]
    pool.handles["a"].process.exitcode = -9  # type: ignore[attr-defined]
    status, body = health_report(core)
    assert (status, body["status"]) == (503, "down")
    assert [row["state"] for row in body["instances"]] == ["failed", "starting"]
    assert body["reason"] == (
        "a failed (out of restart budget); b is loading (a replacement after a failure)"
    )
    core.draining = True
    assert health_report(core)[1]["status"] == "draining"
    assert health_report(core)[1]["reason"] == "shutting down"


def test_the_restart_budget_is_per_instance_and_per_window() -> None:
    budget = RestartBudget(max_restarts=2, window_s=10.0)
    assert [budget.take("a", t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert budget.take("b", 2.0)
    assert budget.take("a", 10.5) and not budget.take("a", 10.6)


def test_a_replacement_that_hangs_while_loading_is_restarted_within_the_budget() -> None:
    core, _, _ = _core()
    pool = _SupervisedPool()
    core.pool = pool  # type: ignore[assignment]
    supervisor = Supervisor(core, 2.0, RestartBudget(2, 600.0), start_timeout_s=30.0)
    pool.handles["b"].last_heard_s = 1e9  # type: ignore[attr-defined]
    assert supervisor.check(now=3.0) == ["a"]  # silent: killed and replaced
    pool.handles["a"].last_heard_s = 1e9  # type: ignore[attr-defined]  # beats while hung
    assert supervisor.check(now=20.0) == []  # still within its start timeout
    assert supervisor.check(now=40.0) == ["a"]
    assert pool.killed == ["a", "a"] and pool.replaced == ["a", "a"]
    assert supervisor.check(now=80.0) == ["a"]  # hung again: out of budget, not replaced
    assert pool.replaced == ["a", "a"] and supervisor.check(now=200.0) == []
