"""ModelRunner: KV budget, step validation, seeded sampling across batches and preemption."""

from __future__ import annotations

import pytest
import torch

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.engine import ModelRunner, bytes_per_block
from hyperflexis.scheduler import ScheduledChunk, SchedulerOutput
from tests.engine.checkpoints import MAX_POSITIONS, VOCAB_SIZE, Checkpoint

SEEDED = SamplingParams(temperature=1.0, top_p=0.95, seed=11)


@pytest.fixture
def runner(hf_checkpoints: dict[str, Checkpoint]) -> ModelRunner:
    return ModelRunner(hf_checkpoints["llama"].path, kv_cache_bytes=1 << 20, block_size=4)


def test_kv_blocks_come_from_the_byte_budget(hf_checkpoints: dict[str, Checkpoint]) -> None:
    path = hf_checkpoints["llama"].path
    runner = ModelRunner(path, kv_cache_bytes=100_000, block_size=8, dtype="bf16")
    # 2 layers x K and V x 8 slots x 2 kv heads x 16 dims x 2 bytes
    assert bytes_per_block(runner.config, 8, torch.bfloat16) == 2 * 2 * 8 * 2 * 16 * 2
    assert runner.num_kv_blocks == 100_000 // 2048
    assert runner.kv_cache.key_caches[0].shape == (runner.num_kv_blocks, 8, 2, 16)
    assert runner.max_model_len == MAX_POSITIONS and runner.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="kv_cache_bytes"):
        ModelRunner(path, kv_cache_bytes=100, block_size=8)


def test_empty_step_and_prefill_without_sampling(runner: ModelRunner) -> None:
    assert runner.execute(SchedulerOutput()) == {}
    chunk = ScheduledChunk("a", [5, 6, 7], 0, [0], False, SEEDED, 0)
    assert runner.execute(SchedulerOutput([chunk])) == {}


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (ScheduledChunk("a", [5] * 9, 0, [0, 1], True, SEEDED, 0), "too few"),
        (ScheduledChunk("a", [VOCAB_SIZE], 0, [0], True, SEEDED, 0), "vocabulary"),
        (ScheduledChunk("a", [5], MAX_POSITIONS, list(range(65)), True, SEEDED, 0), "max_model"),
        (ScheduledChunk("a", [], 0, [0], True, SEEDED, 0), "no token_ids"),
        (ScheduledChunk("a", [5, 6], 3, [0, 512], True, SEEDED, 0), "block id"),
    ],
)
def test_invalid_chunks_are_refused(
    runner: ModelRunner, chunk: ScheduledChunk, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        runner.execute(SchedulerOutput([chunk]))


def test_seeded_request_survives_batching_and_preemption(runner: ModelRunner) -> None:
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    table = [0, 1, 2, 3, 4]
    # Alone: prefill, then four decodes.
    tokens = [
        runner.execute(SchedulerOutput([ScheduledChunk("a", prompt, 0, table, True, SEEDED, 0)]))[
            "a"
        ]
    ]
    for k in range(1, 5):
        pos = len(prompt) + k - 1
        step = ScheduledChunk("a", [tokens[-1]], pos, table, True, SEEDED, k)
        tokens.append(runner.execute(SchedulerOutput([step]))["a"])
    # Preempted after three outputs, recomputed on other blocks next to another request.
    history = prompt + tokens[:3]
    other = ScheduledChunk("b", [7] * 10, 0, [10, 11, 12], True, SamplingParams(), 0)
    redo = ScheduledChunk("a", history, 0, [20, 21, 22, 23], True, SEEDED, 3)
    assert runner.execute(SchedulerOutput([other, redo]))["a"] == tokens[3]
