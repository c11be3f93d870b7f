"""ResumeRequest on the instance loop (a thread, real pipes, the real tiny engine): a request
moved part-way continues its stream with no token or character twice and none missing; a KV
hand-off sent to a collocated instance (no pool registered) recomputes and says so; a resume
that cannot continue fails alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe
from pathlib import Path

import pytest

from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    HandoffDone,
    KVSource,
    OutputDelta,
    ResumeRequest,
    Shutdown,
    StepReport,
)
from hyperflexis.backends.worker import InstanceLoop
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.transfer import PoolDescriptor, PoolLayout

SLO_ = SLO(ttft_s=60.0, tpot_s=10.0)
TIMEOUT_S = 60.0
PROMPT = [(11 * i + 5) % 200 + 3 for i in range(21)]
PARAMS = SamplingParams(
    temperature=1.0, seed=3, max_tokens=12, ignore_eos=True, stop=["\u00a7\u00a7"]
)


class Instance:
    def __init__(self, model: Path) -> None:
        spec = InstanceSpec("w", str(model), "fcfs", kv_cache_bytes=4 << 20)
        self.engine = build_engine(spec).engine
        command_reader, self.commands = Pipe(duplex=False)
        self.reports, report_writer = Pipe(duplex=False)
        self.loop = InstanceLoop("w", self.engine, None, report_writer)
        self.thread = threading.Thread(target=self.loop.run, args=(command_reader,), daemon=True)
        self.thread.start()
        self.handoffs: list[HandoffDone] = []

    def report(self) -> StepReport:
        assert self.reports.poll(TIMEOUT_S), "no report"
        report = self.reports.recv()
        assert isinstance(report, StepReport)
        self.handoffs += report.handoffs
        return report

    def deltas(self, request_id: str, until: int | None = None) -> list[OutputDelta]:
        """Deltas of `request_id` until it finishes (or has `until` tokens)."""
        out: list[OutputDelta] = []
        while not (out and out[-1].finished):
            out += [d for d in self.report().deltas if d.request_id == request_id]
            if until is not None and sum(len(d.token_ids) for d in out) >= until:
                break
        return out


@pytest.fixture(scope="module")
def instance(server_model_dir: Path) -> Iterator[Instance]:
    inst = Instance(server_model_dir)
    yield inst
    inst.commands.send(Shutdown())
    inst.thread.join(TIMEOUT_S)
    assert not inst.thread.is_alive()
    kv = inst.engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks


def _tokens(deltas: list[OutputDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def _text(deltas: list[OutputDelta]) -> str:
    return "".join(d.text for d in deltas)


def _resume(request_id: str, before: list[OutputDelta], kv: KVSource | None) -> ResumeRequest:
    return ResumeRequest(
        request_id,
        PROMPT,
        _tokens(before),
        PARAMS,
        SLO_,
        age_s=1.0,
        ttft_s=0.1,
        num_text_chars_sent=len(_text(before)),
        kv=kv,
    )


def _nowhere(instance: Instance) -> KVSource:
    """A pool descriptor that is never read: this instance has no transport."""
    cache = instance.engine.runner.kv_cache  # type: ignore[attr-defined]
    descriptor = PoolDescriptor("shm", "gone", 1, PoolLayout.of(cache), None)
    return KVSource("p", descriptor, (0,), 5)


@pytest.mark.parametrize("moved_at", [1, 4])
@pytest.mark.parametrize("with_kv", [False, True], ids=["recovery", "kv-to-mixed"])
def test_a_moved_request_continues_its_stream(
    instance: Instance, moved_at: int, with_kv: bool
) -> None:
    tag = f"{moved_at}-{with_kv}"
    instance.commands.send(AddRequest(f"ref{tag}", PROMPT, PARAMS, SLO_, time.monotonic()))
    want = instance.deltas(f"ref{tag}")
    instance.commands.send(AddRequest(f"mv{tag}", PROMPT, PARAMS, SLO_, time.monotonic()))
    before = instance.deltas(f"mv{tag}", until=moved_at)
    instance.commands.send(AbortRequest(f"mv{tag}"))
    while True:  # what it streamed until the abort took effect is what the client has
        report = instance.report()
        before += [d for d in report.deltas if d.request_id == f"mv{tag}"]
        if report.snapshot.num_running == report.snapshot.num_waiting == 0:
            break
    assert len(_tokens(before)) >= moved_at and not before[-1].finished
    # The same id goes on as if elsewhere (it is gone here once the abort is applied).
    kv = _nowhere(instance) if with_kv else None
    instance.commands.send(_resume(f"mv{tag}", before, kv))
    after = instance.deltas(f"mv{tag}")
    assert _tokens(before + after) == _tokens(want)
    assert _text(before + after) == _text(want)
    last, ref = after[-1], want[-1]
    assert (last.finish_reason, last.stop_reason) == (ref.finish_reason, ref.stop_reason)
    assert last.num_output_tokens == ref.num_output_tokens
    assert last.ttft_s == pytest.approx(0.1, abs=1e-6)
    if with_kv:
        [done] = [h for h in instance.handoffs if h.request_id == f"mv{tag}"]
        assert not done.ok and "no KV pool" in (done.error or "")


def test_a_resume_that_cannot_continue_fails_alone(instance: Instance) -> None:
    too_many = ResumeRequest("bad", PROMPT, [5] * 12, PARAMS, SLO_, 1.0, 0.1, 0)
    instance.commands.send(too_many)
    [delta] = instance.deltas("bad")
    assert delta.finish_reason == "error" and delta.error_status == 400
    assert "max_tokens" in (delta.error or "")
