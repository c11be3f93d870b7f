"""The step loop on a fake model runner: request validation, KV freed on every exit, stop strings,
length caps, the clock it is given. No torch, so these run in milliseconds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from hyperflexis.core import SamplingParams
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.core.request import Request
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.scheduler import KVBlockManager, SchedulerConfig, SchedulerOutput, make_scheduler

VOCAB = 26  # token i is the letter chr(ord("a") + i)
EOS = 25  # "z"


@dataclass(frozen=True)
class FakeConfig:
    vocab_size: int = VOCAB
    eos_token_ids: tuple[int, ...] = (EOS,)


@dataclass
class FakeRunner:
    """Samples the letter after the chunk's last token, so every request spells the alphabet
    from its prompt's last letter on, however it is batched, chunked or preempted."""

    config: FakeConfig = field(default_factory=FakeConfig)
    max_model_len: int = 64
    batches: list[SchedulerOutput] = field(default_factory=list)

    def execute(self, scheduler_output: SchedulerOutput) -> Mapping[str, int]:
        self.batches.append(scheduler_output)
        return {
            c.request_id: (c.token_ids[-1] + 1) % VOCAB for c in scheduler_output.chunks if c.sample
        }


class LetterDetokenizer:
    def add_token(self, token_id: int) -> str:
        return "" if token_id == EOS else chr(ord("a") + token_id)

    def flush(self) -> str:
        return ""


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001  # every reading is one millisecond later
        return self.now


def make_engine(
    num_blocks: int = 64,
    block_size: int = 4,
    max_model_len: int = 64,
    eos: tuple[int, ...] = (EOS,),
    clock: ManualClock | None = None,
    **config: object,
) -> tuple[LLMEngine, FakeRunner]:
    runner = FakeRunner(FakeConfig(eos_token_ids=eos), max_model_len)
    scheduler = make_scheduler(
        "fcfs",
        SchedulerConfig(**config),  # type: ignore[arg-type]
        KVBlockManager(num_blocks, block_size),
    )
    engine = LLMEngine(
        runner, scheduler, lambda _prompt: LetterDetokenizer(), clock=clock or ManualClock()
    )
    return engine, runner


def run(engine: LLMEngine) -> dict[str, RequestOutput]:
    final = {}
    for _ in range(1000):
        if not engine.has_unfinished():
            return final
        for output in engine.step():
            if output.finished:
                final[output.request_id] = output
    raise AssertionError("engine did not finish")


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


def test_tokens_text_and_length_finish() -> None:
    engine, _ = make_engine()
    engine.add_request([0, 1], greedy(4), request_id="r")
    out = run(engine)["r"]
    assert out.prompt_token_ids == [0, 1]
    assert out.outputs[0].token_ids == [2, 3, 4, 5]
    assert out.outputs[0].text == "cdef"
    assert out.outputs[0].finish_reason == "length"
    assert out.finished and out.attained is True


def test_eos_stops_and_is_not_in_the_text() -> None:
    engine, _ = make_engine()
    engine.add_request([22], greedy(10), request_id="r")
    out = run(engine)["r"]
    assert out.outputs[0].token_ids == [23, 24, EOS]
    assert out.outputs[0].text == "xy"
    assert out.outputs[0].finish_reason == "stop"


def test_every_eos_id_of_the_model_stops_unless_ignored() -> None:
    engine, _ = make_engine(eos=(EOS, 5))
    engine.add_request([2], greedy(10), request_id="stops")
    engine.add_request([2], greedy(4, ignore_eos=True), request_id="ignores")
    final = run(engine)
    assert final["stops"].outputs[0].token_ids == [3, 4, 5]
    assert final["stops"].outputs[0].finish_reason == "stop"
    assert final["ignores"].outputs[0].token_ids == [3, 4, 5, 6]


def test_stop_string_across_tokens_cuts_text_and_finishes_with_stop() -> None:
    engine, _ = make_engine(num_blocks=16)
    engine.add_request([0], greedy(20, stop=["xx", "de"]), request_id="r")
    streamed = []
    final = None
    while engine.has_unfinished():
        for output in engine.step():
            streamed.append(output.outputs[0].text)
            final = output
    assert final is not None and final.finished
    assert final.outputs[0].text == "bc"  # "de" spans the tokens d and e
    assert final.outputs[0].finish_reason == "stop"
    assert final.outputs[0].stop_reason == "de"
    assert final.outputs[0].token_ids == [1, 2, 3, 4]
    # While running, a possible stop string's first letter is held back from the stream.
    assert "bcd" not in streamed
    assert engine.scheduler.kv.num_free_blocks == 16


def test_stop_string_on_the_last_allowed_token_says_stop() -> None:
    engine, _ = make_engine()
    engine.add_request([0], greedy(3, stop=["d"]), request_id="r")
    out = run(engine)["r"]
    assert out.outputs[0].text == "bc"
    assert out.outputs[0].finish_reason == "stop"


def test_stop_token_ids_finish_with_the_token_as_reason() -> None:
    engine, _ = make_engine()
    engine.add_request([0], greedy(10, stop_token_ids=[3]), request_id="r")
    out = run(engine)["r"]
    assert out.outputs[0].text == "bc"
    assert out.outputs[0].stop_reason == 3


def test_generation_is_capped_at_the_context_with_length() -> None:
    engine, _ = make_engine(max_model_len=8)
    engine.add_request([0] * 6, greedy(10, ignore_eos=True), request_id="r")
    out = run(engine)["r"]
    assert len(out.outputs[0].token_ids) == 2
    assert out.outputs[0].finish_reason == "length"


def test_generation_is_capped_at_the_kv_cache_with_length() -> None:
    engine, _ = make_engine(num_blocks=3, block_size=4, max_model_len=64)
    assert engine.max_context_len == 12
    engine.add_request([0] * 10, greedy(10, ignore_eos=True), request_id="r")
    out = run(engine)["r"]
    assert len(out.outputs[0].token_ids) == 2
    assert engine.scheduler.kv.num_free_blocks == 3


def test_all_blocks_free_after_a_preempting_workload() -> None:
    engine, _ = make_engine(num_blocks=10, block_size=4, max_num_batched_tokens=8)
    for i in range(6):
        engine.add_request([i % 20] * (3 + i), greedy(12, ignore_eos=True), request_id=f"r{i}")
    final = run(engine)
    assert engine.scheduler.num_preemptions > 0
    assert (
        sum(o.metrics.num_preemptions for o in final.values()) == engine.scheduler.num_preemptions
    )
    for i in range(6):
        expected = [(i % 20 + k) % VOCAB for k in range(1, 13)]
        assert final[f"r{i}"].outputs[0].token_ids == expected
    assert engine.scheduler.kv.num_free_blocks == 10
    assert engine.scheduler.kv.owners() == []


def test_abort_mid_generation_frees_every_block() -> None:
    engine, _ = make_engine(num_blocks=32, block_size=4)
    for i in range(4):
        engine.add_request(list(range(10)), greedy(30, ignore_eos=True), request_id=f"r{i}")
    for _ in range(3):
        engine.step()
    assert engine.scheduler.kv.num_free_blocks < 32
    aborted = engine.abort("r1")
    assert aborted is not None and aborted.finished
    assert aborted.outputs[0].finish_reason == "abort"
    assert aborted.attained is False
    assert engine.abort("r1") is None  # already gone
    assert engine.abort("nope") is None
    engine.step()
    for request_id in ("r0", "r2", "r3"):
        engine.abort(request_id)
    assert not engine.has_unfinished()
    assert engine.scheduler.kv.num_free_blocks == 32
    assert engine.step() == []


def test_metrics_come_from_the_given_clock() -> None:
    engine, _ = make_engine()
    engine.add_request([0], greedy(3), request_id="r", arrival_s=50.0)
    out = run(engine)["r"]
    metrics = out.metrics
    assert metrics.arrival_s == 50.0
    assert metrics.first_token_s is not None and metrics.finish_s is not None
    assert 100.0 < metrics.first_token_s <= metrics.finish_s < 101.0
    assert engine.last_step.execute_s == pytest.approx(0.001)


def test_queue_time_ends_at_the_first_step_that_schedules_the_request() -> None:
    engine, _ = make_engine(num_blocks=10, block_size=4, max_num_batched_tokens=8)
    for i in range(6):
        engine.add_request(
            [i % 20] * (3 + i), greedy(12, ignore_eos=True), request_id=f"r{i}", arrival_s=100.0
        )
    first_seen: dict[str, float | None] = {}
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            first_seen.setdefault(output.request_id, output.metrics.first_scheduled_s)
            if output.finished:
                final[output.request_id] = output
    scheduled = [final[f"r{i}"].metrics.first_scheduled_s for i in range(6)]
    assert scheduled == sorted(scheduled) and scheduled[0] < scheduled[-1]  # type: ignore[operator]
    for request_id, output in final.items():
        metrics = output.metrics
        assert metrics.first_scheduled_s is not None and metrics.first_token_s is not None
        assert 100.0 < metrics.first_scheduled_s < metrics.first_token_s
        assert metrics.queue_s == pytest.approx(metrics.first_scheduled_s - 100.0)
        # A preempted request recomputes from position 0 but keeps its first stamp.
        assert metrics.first_scheduled_s == first_seen[request_id]
    assert any(o.metrics.num_preemptions for o in final.values())


def test_step_observer_sees_each_batch_and_the_time_it_really_took() -> None:
    clock = ManualClock()
    engine, runner = make_engine(clock=clock)
    seen: list[tuple[int, float]] = []
    engine.step_observer = lambda batch, seconds: seen.append((batch.num_tokens, seconds))
    engine.add_request([0, 1, 2], greedy(2), request_id="r")
    engine.step()  # 5 clock readings: start, scheduled, executed, updated, done
    assert seen == []  # its time runs until the next step starts
    clock.now += 0.010  # the caller's own work between steps (publishing, commands)
    engine.step()
    # The first batch: its 4 ms plus the 1 ms to the next start and the 10 ms in between. The
    # last one (nothing left to run, so no next step follows straight on): its own 4 ms.
    assert seen == [(3, pytest.approx(0.015)), (1, pytest.approx(0.004))]
    assert len(runner.batches) == 2


def test_an_abort_that_empties_the_engine_reports_the_last_batch_at_once() -> None:
    engine, _ = make_engine()
    seen: list[float] = []
    engine.step_observer = lambda batch, seconds: seen.append(seconds)
    engine.add_request([0, 1, 2], greedy(5), request_id="r")
    engine.step()
    assert seen == []
    engine.abort("r")  # the loop now waits for work: that wait is no part of the step
    assert seen == [pytest.approx(0.004)]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "no tokens"),
        (list(range(20)) * 4, "80 tokens leave no room to generate in the model's context of 64"),
        ([0, 26], "token id 26 is outside the vocabulary of 26 tokens"),
        ([0, -1], "token id -1 is outside the vocabulary of 26 tokens"),
        ([0, 1.5], "token id 1.5 is not an int"),
        ([True], "is not an int"),
    ],
)
def test_invalid_prompts_are_refused_with_the_reason(prompt: list, message: str) -> None:  # type: ignore[type-arg]
    engine, _ = make_engine()
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, greedy(2))
    assert not engine.has_unfinished()


def test_duplicate_request_id_is_refused() -> None:
    engine, _ = make_engine()
    engine.add_request([0], greedy(2), request_id="same")
    with pytest.raises(ValueError, match="duplicate request id 'same'"):
        engine.add_request([1], greedy(2), request_id="same")


def test_a_received_hand_off_decodes_on_from_its_first_token() -> None:
    engine, runner = make_engine(role="decode")
    handed = Request("r", [0, 1, 2], greedy(3))
    handed.append_token(3, 0.5)  # sampled by the prefill instance at t=0.5
    handed.num_computed_tokens = 3  # the prompt's KV came with it
    engine.receive(handed)
    out = run(engine)["r"]
    assert out.outputs[0].token_ids == [3, 4, 5]
    assert out.outputs[0].text == "def"
    assert out.metrics.first_token_s == 0.5
    assert [c.start_pos for b in runner.batches for c in b.chunks] == [3, 4]  # decodes only
    with pytest.raises(ValueError, match="prefill is not done"):
        engine.receive(Request("new", [0, 1], greedy(2)))


def test_sampling_params_must_be_sampling_params() -> None:
    engine, _ = make_engine()
    with pytest.raises(ValueError, match="sampling_params"):
        engine.add_request([0], {"max_tokens": 2})  # type: ignore[arg-type]


def test_numpy_style_integer_token_ids_are_accepted() -> None:
    class Index:
        def __index__(self) -> int:
            return 3

    engine, _ = make_engine()
    engine.add_request([Index()], greedy(1), request_id="r")  # type: ignore[list-item]
    assert run(engine)["r"].prompt_token_ids == [3]
