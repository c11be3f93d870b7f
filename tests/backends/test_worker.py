"""The instance loop in-process (a thread and real pipes) over the real tiny engine: commands in,
one report per step out, deltas that add up to the output, aborts that free KV at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace

import pytest

from hyperflexis.backends.messages import (
    AbortRequest,
    AddRequest,
    OutputDelta,
    Shutdown,
    StepReport,
)
from hyperflexis.backends.worker import InstanceLoop
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.scheduler import KVBlockManager
from hyperflexis.scheduler.leases import LeaseTable

SLO_ = SLO(ttft_s=60.0, tpot_s=10.0)
TIMEOUT_S = 60.0


class Harness:
    def __init__(self, loop: InstanceLoop, commands: Connection, reports: Connection) -> None:
        self.loop = loop
        self.commands = commands
        self.reports = reports

    def add(self, request_id: str, prompt: list[int], max_tokens: int) -> None:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self.commands.send(AddRequest(request_id, prompt, params, SLO_, time.monotonic()))

    def next_report(self) -> StepReport:
        assert self.reports.poll(TIMEOUT_S), "no report from the instance loop"
        report = self.reports.recv()
        assert isinstance(report, StepReport)
        return report

    def deltas_until_finished(self, request_id: str) -> list[OutputDelta]:
        deltas: list[OutputDelta] = []
        while not (deltas and deltas[-1].finished):
            deltas += [d for d in self.next_report().deltas if d.request_id == request_id]
        return deltas


@pytest.fixture(scope="module")
def harness(server_model_dir: Path) -> Iterator[Harness]:
    spec = InstanceSpec("i0", str(server_model_dir), "fcfs", kv_cache_bytes=4 * 1024 * 1024)
    engine, _, cost_model = build_engine(spec)
    command_reader, command_writer = Pipe(duplex=False)
    report_reader, report_writer = Pipe(duplex=False)
    loop = InstanceLoop("i0", engine, cost_model, report_writer)
    thread = threading.Thread(target=loop.run, args=(command_reader,), daemon=True)
    thread.start()
    yield Harness(loop, command_writer, report_reader)
    command_writer.send(Shutdown())
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "Shutdown must end the loop"


def test_deltas_add_up_to_the_output(harness: Harness) -> None:
    harness.add("r1", [5, 6, 7, 8], max_tokens=8)
    deltas = harness.deltas_until_finished("r1")
    last = deltas[-1]
    assert last.finish_reason == "length" and last.num_output_tokens == 8
    token_ids = [t for d in deltas for t in d.token_ids]
    assert len(token_ids) == 8
    tokenizer = harness.loop.engine.runner.tokenizer
    assert "".join(d.text for d in deltas) == tokenizer.decode(token_ids)
    assert last.num_prompt_tokens == 4 and last.ttft_s is not None and last.ttft_s > 0
    assert last.tpot_s is not None and last.attained is True
    # Times the server turns into vLLM's histograms: queue time, and one gap per later token
    # whose sum is the decode time.
    assert last.queue_s is not None and 0 <= last.queue_s < last.ttft_s
    gaps = [d.inter_token_latency_s for d in deltas if d.token_ids]
    assert gaps[0] is None and all(g is not None and g > 0 for g in gaps[1:])
    assert sum(gaps[1:]) == pytest.approx(last.tpot_s * 7)  # type: ignore[arg-type]
    report = harness.next_report() if harness.reports.poll(0.2) else None
    assert report is None, "an idle instance publishes nothing"


def test_every_step_publishes_a_snapshot(harness: Harness) -> None:
    harness.add("r2", [9] * 40, max_tokens=3)
    report = harness.next_report()
    kv_blocks = report.snapshot.num_blocks
    assert report.snapshot.num_running == 1 and report.snapshot.num_free_blocks < kv_blocks
    harness.deltas_until_finished("r2")
    # The finishing step's report already shows the KV freed.
    assert harness.loop.engine.scheduler.kv.num_free_blocks == kv_blocks


def test_abort_frees_kv_in_the_next_report(harness: Harness) -> None:
    harness.add("long", [5] * 30, max_tokens=500)
    while not any(d.request_id == "long" for d in harness.next_report().deltas):
        pass
    harness.commands.send(AbortRequest("long"))
    while True:
        report = harness.next_report()
        assert all(d.request_id != "long" or not d.finished for d in report.deltas)
        snapshot = report.snapshot
        if snapshot.num_running == 0:
            break
    assert snapshot.num_free_blocks == snapshot.num_blocks and snapshot.num_waiting == 0
    harness.commands.send(AbortRequest("long"))  # a second abort of a gone request is harmless


def test_an_invalid_request_fails_alone(harness: Harness) -> None:
    vocab_size = harness.loop.engine.runner.config.vocab_size
    harness.add("bad", [vocab_size + 5], max_tokens=2)
    harness.add("good", [5, 6], max_tokens=2)
    bad = harness.deltas_until_finished("bad")
    assert bad[-1].finish_reason == "error" and bad[-1].error_status == 400
    assert "vocabulary" in (bad[-1].error or "")
    assert harness.deltas_until_finished("good")[-1].finish_reason == "length"


class _IdleEngine:
    """No requests, no leases: all the loop asks of an idle engine."""

    scheduler = SimpleNamespace(leases=LeaseTable(KVBlockManager(1, 1), 1.0))

    def has_unfinished(self) -> bool:
        return False

    def expire_leases(self) -> list[str]:
        return []


def test_the_loop_ends_when_the_server_closes_its_pipe() -> None:
    command_reader, command_writer = Pipe(duplex=False)
    _, report_writer = Pipe(duplex=False)
    loop = InstanceLoop("i1", _IdleEngine(), None, report_writer)  # type: ignore[arg-type]
    thread = threading.Thread(target=loop.run, args=(command_reader,), daemon=True)
    thread.start()
    command_writer.close()  # what a dead server's exit does to its end
    thread.join(TIMEOUT_S)
    assert not thread.is_alive()
