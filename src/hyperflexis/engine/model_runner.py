"""`ModelRunner`: one model replica with its paged KV cache; runs the steps the scheduler plans.

The scheduler decides which tokens run and which KV blocks they use (`SchedulerOutput`); the
runner only computes: it builds the step's index tensors once, runs the decoder over the ragged
batch, computes logits for the rows that sample and picks their tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hyperflexis.engine.attention import StepBatch
from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.default_model import default_model_path
from hyperflexis.engine.kv_cache import KVCache, num_blocks_for_budget
from hyperflexis.engine.loader import load_model, parse_dtype
from hyperflexis.engine.model import CausalLM
from hyperflexis.engine.sampler import Sampler
from hyperflexis.engine.tokenizer import Tokenizer
from hyperflexis.scheduler.output import SchedulerOutput

DEFAULT_CPU_KV_CACHE_BYTES = 64 * 1024 * 1024
GPU_KV_CACHE_FRACTION = 0.5  # of the memory free after loading, when no budget is given


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
    ) -> None:
        self.dtype: torch.dtype = parse_dtype(dtype)  # validated before any loading
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if kv_cache_bytes is not None and kv_cache_bytes < 1:
            raise ValueError(f"kv_cache_bytes must be >= 1, got {kv_cache_bytes}")
        self.device = torch.device(device)
        # The checkpoint folder; the built-in default model when none is given.
        self.model_path: Path = Path(model) if model is not None else default_model_path()
        config, module = load_model(self.model_path, self.dtype, self.device)
        assert isinstance(module, CausalLM)
        self.config: ModelConfig = config
        self.model: CausalLM = module
        self.tokenizer = Tokenizer.from_dir(self.model_path)
        self.block_size = block_size  # tokens per KV block; the KVBlockManager must match
        budget = kv_cache_bytes if kv_cache_bytes is not None else self._default_kv_bytes()
        self.num_kv_blocks: int = num_blocks_for_budget(config, budget, block_size, self.dtype)
        self.kv_cache = KVCache(config, self.num_kv_blocks, block_size, self.dtype, self.device)
        # Longest request context: max_position_embeddings, or Mistral's window if smaller.
        self.max_model_len: int = config.max_model_len
        self.sampler = Sampler(seed)  # its generator serves unseeded requests

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's EOS ids together with the model config's."""
        return self.tokenizer.eos_token_ids | frozenset(self.config.eos_token_ids)

    def execute(self, output: SchedulerOutput) -> dict[str, int]:
        """Run one forward pass over output.chunks; return the sampled token for every chunk
        with chunk.sample True, keyed by request_id."""
        if output.is_empty:
            return {}
        with torch.inference_mode():
            batch = self._build(output)
            hidden = self.model(batch, self.kv_cache, batch.sample_rows)
            if not batch.sample_chunks:
                return {}  # the step only filled the KV cache
            logits = self.model.compute_logits(hidden)
            tokens = self.sampler.sample(
                logits,
                [c.sampling_params for c in batch.sample_chunks],
                [c.num_output_tokens for c in batch.sample_chunks],
            )
        return {c.request_id: t for c, t in zip(batch.sample_chunks, tokens, strict=True)}

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

    def _default_kv_bytes(self) -> int:
        if self.device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(self.device)
            return int(free_bytes * GPU_KV_CACHE_FRACTION)
        return DEFAULT_CPU_KV_CACHE_BYTES
