"""`ServingCore` with stand-in instances, dispatcher and tokenizer: validation, admission,
routing of step reports, metrics, aborts. No processes, no HTTP."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    OutputDelta,
    ResumeRequest,
    StepReport,
)
from hyperflexis.cluster import DispatchDecision, DispatchRequest, LoadSnapshot
from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf import StepFeatures
from hyperflexis.scheduler.config import Role
from hyperflexis.server.access import Access
from hyperflexis.server.core import ServingCore
from hyperflexis.server.errors import APIError
from hyperflexis.server.protocol import parse_chat, parse_completion
from tests.server.scrape import has, value

MAX_CONTEXT = 64


def _snapshot(instance_id: str) -> LoadSnapshot:
    return LoadSnapshot(
        instance_id, "mixed", 0.0, 10, 10, 16, 0, 0, StepFeatures(), math.inf, math.inf, ()
    )


@dataclass(eq=False)
class FakeHandle:
    instance_id: str
    sent: list[Any] = field(default_factory=list)
    alive: bool = True
    num_dispatched: int = 0
    correction_factor: float = 1.0
    snapshot: LoadSnapshot | None = None
    num_preemptions: int = 0
    ready: Any = None  # an InstanceReady; the role comes from the snapshot
    num_restarts: int = 0
    # Its process, as the cost meter reads it: a stopped instance holds no machine.
    process: Any = field(default_factory=lambda: SimpleNamespace(exitcode=0, pid=None))

    @property
    def role(self) -> Role:
        assert self.snapshot is not None
        return self.snapshot.role

    def send(self, command: Any) -> None:
        self.sent.append(command)


class FakePool:
    max_context_len = MAX_CONTEXT
    vocab_size = 100

    def __init__(self) -> None:
        self.handles = {i: FakeHandle(i, snapshot=_snapshot(i)) for i in ("a", "b")}

    def snapshots(self) -> list[LoadSnapshot]:
        return [h.snapshot for h in self.handles.values() if h.snapshot is not None]

    def get(self, instance_id: str) -> FakeHandle:
        return self.handles[instance_id]

    def live(self) -> list[FakeHandle]:
        return [h for h in self.handles.values() if h.alive]


class FakeDispatcher:
    def __init__(self) -> None:
        self.answer: str | None = "a"
        self.seen: list[DispatchRequest] = []

    def choose(self, request: DispatchRequest, snapshots: list[LoadSnapshot], now: float) -> Any:
        self.seen.append(request)
        return DispatchDecision(self.answer, "test")


class FakeTokenizer:
    vocab_size = 100

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(word) for word in text.split()]

    def encode_chat(self, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> list[int]:
        if any(m["role"] not in ("user", "assistant", "system") for m in messages):
            raise ValueError("chat template failed: unknown role")
        return [1] + [len(m["content"]) for m in messages]


def _core(max_queued: int | None = None) -> tuple[ServingCore, FakePool, FakeDispatcher]:
    pool, dispatcher = FakePool(), FakeDispatcher()
    core = ServingCore(
        pool,  # type: ignore[arg-type]
        dispatcher,  # type: ignore[arg-type]
        FakeTokenizer(),  # type: ignore[arg-type]
        Access(SLOClasses()),
        "tiny",
        model_aliases=("/models/tiny",),
        max_queued=max_queued,
    )
    return core, pool, dispatcher


def _error(core: ServingCore, body: dict[str, Any]) -> APIError:
    with pytest.raises(APIError) as info:
        core.submit(parse_completion(body, {}), None, 0.0)
    return info.value


def test_submit_tokenises_dispatches_and_sends() -> None:
    core, pool, dispatcher = _core()
    (stream,) = core.submit(
        parse_completion({"prompt": "aa bbb", "model": "/models/tiny"}, {}), None, 5.0
    )
    (request,) = dispatcher.seen
    assert (request.num_prompt_tokens, request.max_tokens, request.arrival_s) == (2, 16, 5.0)
    (command,) = pool.handles["a"].sent
    assert isinstance(command, AddRequest)
    assert command.prompt_token_ids == [2, 3] and command.request_id == stream.request_id
    assert command.slo.class_name == "standard"
    assert core.num_queued == 1 and pool.handles["a"].num_dispatched == 1

    (chat,) = core.submit(
        parse_chat({"messages": [{"role": "user", "content": "hey"}]}, {}), None, 0
    )
    assert chat.request_id.startswith("chatcmpl-")
    assert pool.handles["a"].sent[-1].sampling_params.max_tokens == MAX_CONTEXT - 2


def test_invalid_requests_are_4xx_and_reach_no_instance() -> None:
    core, pool, _ = _core()
    assert _error(core, {"prompt": "x", "model": "other"}).status == 404
    too_long = _error(core, {"prompt": [1] * MAX_CONTEXT})
    assert too_long.status == 400 and too_long.code == "context_length_exceeded"
    assert f"{MAX_CONTEXT} tokens" in too_long.message
    over = _error(core, {"prompt": [1] * 10, "max_tokens": MAX_CONTEXT})
    assert over.param == "max_tokens" and str(10 + MAX_CONTEXT) in over.message
    assert _error(core, {"prompt": [100]}).param == "prompt"  # outside the vocabulary
    assert _error(core, {"prompt": "x", "temperature": "hot"}).param == "temperature"
    with pytest.raises(APIError) as info:
        core.submit(parse_chat({"messages": [{"role": "robot", "content": "x"}]}, {}), None, 0)
    assert info.value.param == "messages"
    assert all(not h.sent for h in pool.handles.values())


def test_admission_control_answers_503() -> None:
    core, _, dispatcher = _core(max_queued=1)
    core.submit(parse_completion({"prompt": "x"}, {}), None, 0.0)
    full = _error(core, {"prompt": "x"})
    assert full.status == 503 and full.headers["Retry-After"] == "1"
    core, _, dispatcher = _core()
    dispatcher.answer = None
    rejected = _error(core, {"prompt": "x"})
    assert rejected.status == 503 and core.num_queued == 0
    text = core.metrics.render(0)[0].decode()
    rejected = "hyperflexis:requests_rejected_total"
    assert value(text, rejected, slo_class="standard", reason="dispatch") == 1
    assert value(text, rejected, slo_class="standard", reason="queue") == 0
    assert value(text, "hyperflexis:requests_missed_total", cause="rejected") == 1


def test_reports_reach_their_stream_and_feed_metrics() -> None:
    core, pool, _ = _core()
    (stream,) = core.submit(parse_completion({"prompt": "x", "max_tokens": 2}, {}), None, 0.0)
    handle = pool.handles["a"]
    first = OutputDelta(stream.request_id, [7], "a", num_output_tokens=1)
    last = OutputDelta(
        stream.request_id,
        [8],
        "b",
        "length",
        num_output_tokens=2,
        ttft_s=0.1,
        tpot_s=0.01,
        attained=True,
    )
    stranger = OutputDelta("unknown", [1], "z")
    core.on_report(handle, StepReport("a", _snapshot("a"), [first, stranger]))  # type: ignore[arg-type]
    assert core.num_queued == 0
    core.on_report(handle, StepReport("a", _snapshot("a"), [last]))  # type: ignore[arg-type]
    assert [stream.queue.get_nowait() for _ in range(2)] == [first, last]
    assert stream.finished and not core.streams
    text = core.metrics.render(core.num_queued)[0].decode()
    assert value(text, "hyperflexis:requests_attained_total", slo_class="standard") == 1
    assert value(text, "hyperflexis:time_to_first_token_seconds_count", slo_class="standard") == 1
    tpot = "hyperflexis:time_per_output_token_seconds_bucket"
    assert value(text, tpot, slo_class="standard", le="0.01") == 1
    assert value(text, "vllm:time_to_first_token_seconds_count", engine="a") == 1
    assert value(text, "vllm:generation_tokens_total", engine="a") == 2
    assert value(text, "vllm:request_success_total", finished_reason="length") == 1


def test_abort_tells_the_instance_once() -> None:
    core, pool, _ = _core()
    (stream,) = core.submit(parse_completion({"prompt": "x"}, {}), None, 0.0)
    core.abort(stream)
    core.abort(stream)
    aborts = [c for c in pool.handles["a"].sent if isinstance(c, AbortRequest)]
    assert aborts == [AbortRequest(stream.request_id)]
    assert core.num_queued == 0 and not core.streams


def test_a_dead_instance_resumes_its_streaming_requests_and_sends_the_others_again() -> None:
    core, pool, dispatcher = _core()
    (on_a,) = core.submit(parse_completion({"prompt": "x"}, {}), None, 0.0)
    (not_started,) = core.submit(parse_completion({"prompt": "y"}, {}), None, 0.0)
    first = OutputDelta(on_a.request_id, [7], "7")
    core.on_report(pool.handles["a"], StepReport("a", _snapshot("a"), [first]))  # type: ignore[arg-type]
    on_a.queue.get_nowait()
    dispatcher.answer = "b"
    (on_b,) = core.submit(parse_completion({"prompt": "x"}, {}), None, 0.0)
    pool.handles["a"].alive = False
    core.on_exit(pool.handles["a"])  # type: ignore[arg-type]
    # Streamed: continues on b from what the client has (the one resume path, no KV).
    assert on_a.instance_id == "b" and on_a.queue.empty()
    resume = next(c for c in pool.handles["b"].sent if isinstance(c, ResumeRequest))
    assert resume.request_id == on_a.request_id and resume.kv is None
    assert (resume.output_token_ids, resume.num_text_chars_sent) == ([7], 1)
    # No first token yet: dispatched again, from the start, to a live instance.
    assert not_started.instance_id == "b" and not_started.queue.empty()
    again = pool.handles["b"].sent[-1]
    assert isinstance(again, AddRequest) and again.request_id == not_started.request_id
    assert again.prompt_token_ids == [1]
    assert on_b.queue.empty()
    assert sorted(core.streams) == sorted([r.request_id for r in (on_a, on_b, not_started)])
    text = core.metrics.render(0)[0].decode()
    assert not has(text, "vllm:num_requests_running", engine="a")  # its gauges are gone
    assert has(text, "vllm:num_requests_running", engine="b")


def test_n_samples_and_prompt_lists_are_separate_requests() -> None:
    core, pool, dispatcher = _core()
    body = {"prompt": ["aa", "b c"], "n": 2, "seed": 5, "temperature": 1.0}
    streams = core.submit(parse_completion(body, {}), None, 0.0)
    assert [s.prompt_index for s in streams] == [0, 0, 1, 1]
    assert len({id(s.queue) for s in streams}) == 1  # one queue for the HTTP request
    assert [r.num_prompt_tokens for r in dispatcher.seen] == [1, 1, 2, 2]
    sent = pool.handles["a"].sent
    assert [c.sampling_params.seed for c in sent] == [5, 6, 5, 6]
    assert all(c.sampling_params.n == 1 for c in sent)


def test_a_rejected_sample_aborts_those_already_sent() -> None:
    core, pool, dispatcher = _core()
    answers = iter(["a", "a", None])
    choose = dispatcher.choose

    def third_rejected(request: DispatchRequest, snapshots: Any, now: float) -> Any:
        dispatcher.answer = next(answers)
        return choose(request, snapshots, now)

    dispatcher.choose = third_rejected  # type: ignore[method-assign]
    assert _error(core, {"prompt": "x", "n": 3}).status == 503
    aborts = [c for c in pool.handles["a"].sent if isinstance(c, AbortRequest)]
    assert len(aborts) == 2 and not core.streams and core.num_queued == 0


def test_more_samples_than_one_request_may_start_is_a_400() -> None:
    core, pool, _ = _core()
    for body in ({"prompt": "x", "n": 129}, {"prompt": ["x"] * 65, "n": 2}):
        error = _error(core, body)
        assert error.status == 400 and "at most 128 samples" in error.message
    assert not core.streams and not pool.handles["a"].sent
