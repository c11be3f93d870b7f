"""Parity (DESIGN.md §1) with the real model: one seeded workload through the engine loop
(`LLMEngine` with a real model runner on a tiny checkpoint) and through the simulator, with the
same fixed latency model as the clock, gives the same sequence of scheduling decisions. One
instance; `test_parity_cluster.py` covers clusters and P/D without torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from hyperflexis.core import SamplingParams, SLOClasses
from hyperflexis.scheduler import KVBlockManager, SchedulerConfig, SchedulerOutput, make_scheduler
from hyperflexis.sim import ClusterSimulator, Deployment
from hyperflexis.sim.fast_forward import StepRecord
from hyperflexis.workloads import Workload, build_workload, make_lengths, parse_slo_mix, poisson
from tests.sim.engine_cluster import SilentDetokenizer, VirtualClock
from tests.sim.helpers import COST_MODEL

pytest.importorskip("torch")

KV_CACHE_BYTES = 24 * 16 * 512  # 24 blocks of 16 tokens of the tiny model: preemption happens
CONFIG = SchedulerConfig(max_num_batched_tokens=96)  # small, so prompts are chunked
CLASSES = SLOClasses()


class ClockedRunner:
    """The real model runner; each step advances the clock by the latency model's prediction
    for its batch, and is logged the way the simulator logs its steps."""

    def __init__(self, runner: object, clock: VirtualClock) -> None:
        self._runner = runner
        self._clock = clock
        self.log: list[StepRecord] = []

    @property
    def config(self) -> object:
        return self._runner.config  # type: ignore[attr-defined]

    @property
    def max_model_len(self) -> int:
        return self._runner.max_model_len  # type: ignore[attr-defined,no-any-return]

    def execute(self, output: SchedulerOutput) -> Mapping[str, int]:
        self.log.append(
            (self._clock.now, [(c.request_id, c.start_pos, c.num_tokens) for c in output.chunks])
        )
        sampled = self._runner.execute(output)  # type: ignore[attr-defined]
        self._clock.now += COST_MODEL.predict(output.features())
        return sampled  # type: ignore[no-any-return]


def _workload() -> Workload:
    return build_workload(
        seed=3,
        slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", CLASSES),
        arrival=poisson(40.0),
        prompt_lens=make_lengths("uniform", lo=5, hi=150),
        output_lens=make_lengths("uniform", lo=2, hi=40),
        num_requests=16,
    )


def _engine_steps(policy: str, model_dir: Path, workload: Workload) -> tuple[list[StepRecord], int]:
    from hyperflexis.engine import ModelRunner
    from hyperflexis.engine.loop import LLMEngine

    clock = VirtualClock()
    model_runner = ModelRunner(model_dir, kv_cache_bytes=KV_CACHE_BYTES)
    runner = ClockedRunner(model_runner, clock)
    kv = KVBlockManager(model_runner.num_kv_blocks, model_runner.block_size)
    scheduler = make_scheduler(policy, CONFIG, kv, COST_MODEL)
    engine = LLMEngine(runner, scheduler, lambda _: SilentDetokenizer(), clock=clock)
    pending = list(workload)
    for _ in range(10_000):
        while pending and pending[0].arrival_s <= clock.now:
            spec = pending.pop(0)
            engine.add_request(
                [3 + i % 100 for i in range(spec.prompt_len)],
                SamplingParams(max_tokens=spec.output_len, temperature=0.0, ignore_eos=True),
                slo=CLASSES.resolve(spec.slo_class),
                request_id=spec.request_id,
                arrival_s=spec.arrival_s,
            )
        if engine.has_unfinished():
            engine.step()
        elif pending:
            clock.now = pending[0].arrival_s  # idle until the next request
        else:
            return runner.log, model_runner.num_kv_blocks
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("policy", ["fcfs", "hyperflexis"])
def test_simulator_and_engine_make_the_same_decisions(policy: str, tiny_llama_dir: Path) -> None:
    from hyperflexis.cluster import make_dispatcher

    workload = _workload()
    engine_log, num_kv_blocks = _engine_steps(policy, tiny_llama_dir, workload)
    simulator = ClusterSimulator(
        Deployment(num_mixed=1),
        policy,
        CONFIG,
        COST_MODEL,
        make_dispatcher("round-robin", COST_MODEL, CONFIG),
        CLASSES,
        num_kv_blocks,
        16,
        fast_forward=False,
        record_steps=True,
    )
    result = simulator.run(workload)
    sim_log = result.step_logs["mixed-0"]
    assert len(sim_log) == len(engine_log)
    for index, (sim_step, engine_step) in enumerate(zip(sim_log, engine_log, strict=True)):
        assert sim_step[1] == engine_step[1], f"step {index} differs"
        assert sim_step[0] == pytest.approx(engine_step[0], rel=1e-12, abs=1e-12)
    # The workload exercises chunked prefill, batching, and (fcfs) preemption.
    assert any(len(chunks) > 1 for _, chunks in engine_log)
    assert any(start > 0 and n > 1 for _, chunks in engine_log for _, start, n in chunks)
    if policy == "fcfs":
        assert result.num_preemptions > 0
