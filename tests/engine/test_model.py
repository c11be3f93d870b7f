"""Logits parity with transformers, through the paged KV cache and over ragged batches."""

from __future__ import annotations

import pytest
import torch

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.engine import ModelRunner
from hyperflexis.engine.attention import group_decodes
from hyperflexis.scheduler import ScheduledChunk, SchedulerOutput, num_blocks_for
from tests.engine.checkpoints import VOCAB_SIZE, Checkpoint

ATOL = 1e-4
BLOCK_SIZE = 4
GREEDY = SamplingParams(temperature=0.0)


def _runner(checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu") -> ModelRunner:
    return ModelRunner(
        checkpoint.path, dtype=dtype, device=device, kv_cache_bytes=1 << 20, block_size=BLOCK_SIZE
    )


def _reference_logits(checkpoint: Checkpoint, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return checkpoint.reference(torch.tensor([ids])).logits[0].float()


def _chunk(
    request_id: str, ids: list[int], start: int, table: list[int], sample: bool = True
) -> ScheduledChunk:
    return ScheduledChunk(request_id, ids, start, table, sample, GREEDY, 0)


def _prompt(seed: int, length: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (length,), generator=generator).tolist()


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "llama_sharded"])
def test_full_prompt_logits_match_transformers(
    hf_checkpoints: dict[str, Checkpoint], name: str
) -> None:
    checkpoint = hf_checkpoints[name]
    if name == "llama_sharded":
        assert len(list(checkpoint.path.glob("model-*-of-*.safetensors"))) > 1
    runner = _runner(checkpoint)
    ids = _prompt(1, 13)
    table = [7, 2, 5, 0]  # out of order on purpose: the block table, not adjacency, must count
    ours = runner.forward_logits(SchedulerOutput([_chunk("a", ids, 0, table)]), all_rows=True)
    torch.testing.assert_close(ours, _reference_logits(checkpoint, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_incremental_decoding_through_paged_cache_matches_transformers(
    hf_checkpoints: dict[str, Checkpoint], name: str
) -> None:
    checkpoint = hf_checkpoints[name]
    runner = _runner(checkpoint)
    ids = _prompt(2, 20)
    expected = _reference_logits(checkpoint, ids)
    table = [9, 3, 11, 1, 6]
    # A prefill chunk from position 0, a chunk continuing from the cache, then decodes.
    first = runner.forward_logits(SchedulerOutput([_chunk("a", ids[:6], 0, table)]), True)
    torch.testing.assert_close(first, expected[:6], atol=ATOL, rtol=0)
    second = runner.forward_logits(SchedulerOutput([_chunk("a", ids[6:11], 6, table)]), True)
    torch.testing.assert_close(second, expected[6:11], atol=ATOL, rtol=0)
    for pos in range(11, len(ids)):
        step = runner.forward_logits(SchedulerOutput([_chunk("a", [ids[pos]], pos, table)]))
        torch.testing.assert_close(step[0], expected[pos], atol=ATOL, rtol=0)


def test_ragged_batch_matches_each_request_alone(hf_checkpoints: dict[str, Checkpoint]) -> None:
    checkpoint = hf_checkpoints["llama"]
    runner = _runner(checkpoint)
    prompts = {rid: _prompt(seed, 9 + seed) for seed, rid in enumerate("abcd")}
    tables = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9, 10, 11], "d": [15, 14, 13, 12]}
    # History: a and d hold all but their last token, b its first 5 tokens.
    runner.forward_logits(
        SchedulerOutput(
            [
                _chunk("a", prompts["a"][:-1], 0, tables["a"], sample=False),
                _chunk("b", prompts["b"][:5], 0, tables["b"], sample=False),
                _chunk("d", prompts["d"][:-1], 0, tables["d"], sample=False),
            ]
        ),
        all_rows=True,
    )
    a, b, c, d = (prompts[r] for r in "abcd")
    batch = SchedulerOutput(
        [
            _chunk("a", a[-1:], len(a) - 1, tables["a"]),  # decode
            _chunk("c", c, 0, tables["c"]),  # whole prefill
            _chunk("b", b[5:], 5, tables["b"]),  # prefill continuing from the cache
            _chunk("d", d[-1:], len(d) - 1, tables["d"]),  # decode
        ]
    )
    rows = runner.forward_logits(batch, all_rows=True)
    expected = torch.cat(
        [
            _reference_logits(checkpoint, a)[-1:],
            _reference_logits(checkpoint, c),
            _reference_logits(checkpoint, b)[5:],
            _reference_logits(checkpoint, d)[-1:],
        ]
    )
    torch.testing.assert_close(rows, expected, atol=ATOL, rtol=0)


def test_execute_samples_only_sampling_chunks_greedily(
    hf_checkpoints: dict[str, Checkpoint],
) -> None:
    checkpoint = hf_checkpoints["qwen2"]
    runner = _runner(checkpoint)
    a, b = _prompt(5, 7), _prompt(6, 10)
    out = runner.execute(
        SchedulerOutput([_chunk("a", a, 0, [0, 1]), _chunk("b", b[:4], 0, [2, 3, 4], False)])
    )
    assert out == {"a": int(_reference_logits(checkpoint, a)[-1].argmax())}


def test_bf16_forward_is_finite_and_close_to_fp32(hf_checkpoints: dict[str, Checkpoint]) -> None:
    checkpoint = hf_checkpoints["llama"]
    ids = _prompt(3, 12)
    output = SchedulerOutput([_chunk("a", ids, 0, [0, 1, 2])])
    fp32 = _runner(checkpoint).forward_logits(output, all_rows=True)
    bf16 = _runner(checkpoint, dtype="bf16").forward_logits(output, all_rows=True)
    assert torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max() + 1e-2


def test_fp16_forward_is_finite(hf_checkpoints: dict[str, Checkpoint]) -> None:
    ids = _prompt(4, 6)
    runner = _runner(hf_checkpoints["qwen2"], dtype="fp16")
    logits = runner.forward_logits(SchedulerOutput([_chunk("a", ids, 0, [0, 1])]), all_rows=True)
    assert torch.isfinite(logits).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_matches_cpu(hf_checkpoints: dict[str, Checkpoint], dtype: str) -> None:
    checkpoint = hf_checkpoints["llama"]
    ids = _prompt(7, 30)
    table = list(range(8))
    cpu = _runner(checkpoint).forward_logits(SchedulerOutput([_chunk("a", ids, 0, table)]), True)
    runner = _runner(checkpoint, dtype=dtype, device="cuda")
    prefill = runner.forward_logits(SchedulerOutput([_chunk("a", ids[:-1], 0, table)]), True)
    decode = runner.forward_logits(SchedulerOutput([_chunk("a", ids[-1:], len(ids) - 1, table)]))
    gpu = torch.cat([prefill, decode]).cpu()
    tolerance = 1e-3 if dtype == "float32" else 0.05 * float(cpu.abs().max()) + 1e-2
    assert (gpu - cpu).abs().max() < tolerance


def test_decodes_of_very_different_lengths_match_transformers(
    hf_checkpoints: dict[str, Checkpoint],
) -> None:
    checkpoint = hf_checkpoints["llama"]
    runner = _runner(checkpoint)
    lengths = {"a": 2, "b": 61, "c": 6, "d": 30, "e": 120}  # padding to 120 would waste most
    prompts = {rid: _prompt(10 + n, n) for rid, n in lengths.items()}
    tables: dict[str, list[int]] = {}
    next_block = 0
    for rid, n in lengths.items():
        num_blocks = num_blocks_for(n, BLOCK_SIZE)
        tables[rid] = list(range(next_block, next_block + num_blocks))[::-1]
        next_block += num_blocks
    history = [_chunk(r, p[:-1], 0, tables[r], sample=False) for r, p in prompts.items()]
    runner.forward_logits(SchedulerOutput(history), all_rows=True)
    decodes = [_chunk(r, p[-1:], len(p) - 1, tables[r]) for r, p in prompts.items()]
    rows = runner.forward_logits(SchedulerOutput(decodes))
    expected = torch.stack([_reference_logits(checkpoint, p)[-1] for p in prompts.values()])
    torch.testing.assert_close(rows, expected, atol=ATOL, rtol=0)
    # The same decodes next to a prefill chunk take the scattered path.
    mixed = [*decodes[:2], _chunk("f", _prompt(99, 7), 0, [200, 201]), *decodes[2:]]
    rows = runner.forward_logits(SchedulerOutput(mixed))
    torch.testing.assert_close(rows[:2], expected[:2], atol=ATOL, rtol=0)
    torch.testing.assert_close(rows[3:], expected[2:], atol=ATOL, rtol=0)


def test_decode_grouping_bounds_padding() -> None:
    groups = group_decodes([0, 1, 2, 3], [4, 5, 100, 120], block_size=4)
    assert [members for members, _ in groups] == [[0, 1], [2, 3]]
    assert group_decodes([7, 8], [50, 60], block_size=4) == [([0, 1], [7, 8])]
    assert group_decodes([], [], block_size=4) == []
