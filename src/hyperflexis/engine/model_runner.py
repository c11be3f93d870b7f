"""`ModelRunner`: one model replica with its paged KV cache; runs the steps the scheduler plans.

The scheduler decides which tokens run and which KV blocks they use (`SchedulerOutput`); the
runner only computes: it builds the step's index tensors once, runs the decoder over the ragged
batch, computes logits for the rows that sample and picks their tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperflexis.core.outputs import Logprob, SampledTokens
from hyperflexis.engine.attention import StepBatch
from hyperflexis.engine.config import ModelConfig, resolve_dtype_name
from hyperflexis.engine.default_model import default_model_path
from hyperflexis.engine.kv_cache import KVCache, num_blocks_for_budget
from hyperflexis.engine.kv_cache import kv_cache_bytes as pool_bytes
from hyperflexis.engine.loader import load_model, parse_dtype
from hyperflexis.engine.model import CausalLM
from hyperflexis.engine.sampler import Sampler, compute_logprobs
from hyperflexis.engine.tokenizer import Tokenizer
from hyperflexis.scheduler.output import ScheduledChunk, SchedulerOutput

DEFAULT_CPU_KV_CACHE_BYTES = 64 * 1024 * 1024
GPU_KV_CACHE_FRACTION = 0.5  # of the memory free after loading, when no budget is given
# Of the room gpu_memory_utilization leaves after loading, what the KV cache leaves for a step's
# activations and the allocator's slack (vLLM measures a profile run; this is a fixed share).
ACTIVATION_RESERVE_FRACTION = 0.1


# Reads a checkpoint folder into (config, model in eval mode, fused): `loader.load_model` or a
# weight source's loader.
WeightLoader = Callable[[Path, torch.dtype, torch.device], tuple[ModelConfig, torch.nn.Module]]

# Flat zeroed uint8 memory of this many bytes on this device, for the KV cache to be views of.
KVStorage = Callable[[int, torch.device], torch.Tensor]


class ModelRunner:
    """Loads a checkpoint (the built-in tiny model when `model` is None) and runs steps."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        kv_cache_bytes: int | None = None,
        block_size: int = 16,
        seed: int = 0,
        tokenizer: str | Path | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_storage: KVStorage | None = None,
        load: WeightLoader = load_model,
    ) -> None:
        """`tokenizer`: a folder other than the model's; `max_model_len`: a context shorter
        than the model's; `gpu_memory_utilization`: the fraction of the device's memory this
        replica may fill, KV cache included (CUDA only; vLLM's meaning); `kv_storage`: where
        the KV cache's memory comes from (a KV transport's `allocate`, so peers can read it);
        `load`: reads the weights (`transfer.instance_weights.InstanceWeights`: from a peer)."""
        if dtype != "auto":
            parse_dtype(dtype)  # validated before any loading
        _check_limits(block_size, kv_cache_bytes, max_model_len, gpu_memory_utilization, device)
        self.device = torch.device(device)
        # The checkpoint folder; the built-in default model when none is given.
        self.model_path: Path = Path(model) if model is not None else default_model_path()
        # The dtype's name after vLLM's "auto" is resolved (profiles are cached under it).
        self.dtype_name = resolve_dtype_name(dtype, self.model_path, device)
        self.dtype: torch.dtype = parse_dtype(self.dtype_name)
        config, module = load(self.model_path, self.dtype, self.device)
        assert isinstance(module, CausalLM)
        self.config: ModelConfig = config
        self.model: CausalLM = module
        self.tokenizer = Tokenizer.from_dir(self.model_path if tokenizer is None else tokenizer)
        # Longest request context: max_position_embeddings, or Mistral's window if smaller.
        self.max_model_len: int = config.max_model_len
        if max_model_len is not None:
            if max_model_len > config.max_model_len:
                raise ValueError(
                    f"max_model_len {max_model_len} exceeds the model's context of "
                    f"{config.max_model_len} tokens"
                )
            self.max_model_len = max_model_len
        self.block_size = block_size  # tokens per KV block; the KVBlockManager must match
        budget = kv_cache_bytes
        if budget is None:
            budget = self._default_kv_bytes(gpu_memory_utilization)
        self.num_kv_blocks: int = num_blocks_for_budget(config, budget, block_size, self.dtype)
        storage = None
        if kv_storage is not None:
            num_bytes = pool_bytes(config, self.num_kv_blocks, block_size, self.dtype)
            storage = kv_storage(num_bytes, self.device)
        self.kv_cache = KVCache(
            config, self.num_kv_blocks, block_size, self.dtype, self.device, storage
        )
        # Its generator serves unseeded requests; min_tokens masks these EOS ids.
        self.sampler = Sampler(seed, self.eos_token_ids)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's EOS ids together with the model config's."""
        return self.tokenizer.eos_token_ids | frozenset(self.config.eos_token_ids)

    def execute(self, output: SchedulerOutput) -> SampledTokens:
        """Run one forward pass over output.chunks; return the sampled token for every chunk
        with chunk.sample True, keyed by request_id, with logprobs where asked."""
        if output.is_empty:
            return SampledTokens({}, {})
        with torch.inference_mode():
            batch = self._build(output)
            prompt_rows = _prompt_logprob_rows(output.chunks)
            rows = batch.sample_rows
            if prompt_rows:
                extra = torch.tensor([r.row for r in prompt_rows], dtype=torch.long)
                rows = torch.cat((rows, extra.to(rows.device)))
            hidden = self.model(batch, self.kv_cache, rows)
            chunks = batch.sample_chunks
            if not chunks and not prompt_rows:
                return SampledTokens({}, {})  # the step only filled the KV cache
            all_logits = self.model.compute_logits(hidden)
            logits = all_logits[: len(chunks)]
            prompt_logprobs = _prompt_logprobs(all_logits[len(chunks) :], prompt_rows)
            if not chunks:
                return SampledTokens({}, {}, prompt_logprobs)
            params = [c.sampling_params for c in chunks]
            tokens = self.sampler.sample(
                logits,
                params,
                [c.num_output_tokens for c in chunks],
                [c.context_token_ids for c in chunks],
            )
            logprobs = compute_logprobs(logits, tokens, [p.logprobs for p in params])
        return SampledTokens(
            {c.request_id: t for c, t in zip(chunks, tokens, strict=True)},
            {c.request_id: lp for c, lp in zip(chunks, logprobs, strict=True) if lp is not None},
            prompt_logprobs,
        )

    def forward_logits(self, output: SchedulerOutput, all_rows: bool = False) -> torch.Tensor:
        """Float32 logits of the step (writing its KV like `execute`, without sampling): for
        every token in batch order when `all_rows`, else for each sampling chunk's last token."""
        with torch.inference_mode():
            batch = self._build(output)
            hidden = self.model(batch, self.kv_cache, None if all_rows else batch.sample_rows)
            return self.model.compute_logits(hidden).float()

    def _build(self, output: SchedulerOutput) -> StepBatch:
        return StepBatch.build(
            output.chunks,
            self.block_size,
            self.device,
            self.max_model_len,
            self.config.vocab_size,
            self.dtype,
            self.num_kv_blocks,
        )

    def _default_kv_bytes(self, gpu_memory_utilization: float | None) -> int:
        if self.device.type != "cuda":
            return DEFAULT_CPU_KV_CACHE_BYTES
        free_bytes, total_bytes = torch.cuda.mem_get_info(self.device)
        if gpu_memory_utilization is None:
            return int(free_bytes * GPU_KV_CACHE_FRACTION)
        # Of the replica's share, what loading left: the KV cache plus a reserve for activations.
        used_bytes = total_bytes - free_bytes
        room = gpu_memory_utilization * total_bytes - used_bytes
        kv_bytes = int(room * (1.0 - ACTIVATION_RESERVE_FRACTION))
        if kv_bytes < 1:
            raise ValueError(
                f"gpu_memory_utilization {gpu_memory_utilization} leaves no room for the KV "
                f"cache: {used_bytes / 2**30:.1f} GiB of {total_bytes / 2**30:.1f} GiB in use"
            )
        return kv_bytes


@dataclass(frozen=True, slots=True)
class _PromptRow:
    """A batch row whose logits give the logprob of the prompt token after it."""

    request_id: str
    row: int  # in the step's batch
    position: int  # of the prompt token it predicts (>= 1)
    token_id: int  # that token
    num_top: int  # alternatives wanted


def _prompt_logprob_rows(chunks: list[ScheduledChunk]) -> list[_PromptRow]:
    """Rows of chunks whose request wants prompt logprobs, on its first pass over the prompt
    (a recompute after a preemption that produced tokens already had them)."""
    rows: list[_PromptRow] = []
    offset = 0
    for chunk in chunks:
        num_top = chunk.sampling_params.prompt_logprobs
        context = chunk.context_token_ids
        if num_top is not None and chunk.num_output_tokens == 0 and context is not None:
            # Positions up to the second-to-last prompt token predict a prompt token.
            last = min(chunk.start_pos + chunk.num_tokens, len(context) - 1)
            for position in range(chunk.start_pos, last):
                row = offset + position - chunk.start_pos
                rows.append(
                    _PromptRow(chunk.request_id, row, position + 1, context[position + 1], num_top)
                )
        offset += chunk.num_tokens
    return rows


def _prompt_logprobs(
    logits: torch.Tensor, rows: list[_PromptRow]
) -> dict[str, dict[int, dict[int, Logprob]]]:
    """Request id -> prompt position -> that token's and the top tokens' Logprobs."""
    result: dict[str, dict[int, dict[int, Logprob]]] = {}
    if not rows:
        return result
    entries = compute_logprobs(logits, [r.token_id for r in rows], [r.num_top for r in rows])
    for r, entry in zip(rows, entries, strict=True):
        assert entry is not None
        result.setdefault(r.request_id, {})[r.position] = entry
    return result


def _check_limits(
    block_size: int,
    kv_cache_bytes: int | None,
    max_model_len: int | None,
    gpu_memory_utilization: float | None,
    device: str,
) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if kv_cache_bytes is not None and kv_cache_bytes < 1:
        raise ValueError(f"kv_cache_bytes must be >= 1, got {kv_cache_bytes}")
    if max_model_len is not None and max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    if gpu_memory_utilization is not None:
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if not device.startswith("cuda"):
            raise ValueError(
                "gpu_memory_utilization sizes the KV cache on a CUDA device; "
                f"on {device!r} give kv_cache_bytes instead"
            )
        if kv_cache_bytes is not None:
            raise ValueError("give gpu_memory_utilization or kv_cache_bytes, not both")
