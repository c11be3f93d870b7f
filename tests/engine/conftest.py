"""Fixtures: tiny random Hugging Face checkpoints written with transformers' `save_pretrained`
(transformers is a test dependency only), plus the built-in default model in a tmp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hyperflexis.engine.default_model import SEED, write_default_model
from tests.engine.checkpoints import COMMON, Checkpoint


def _save(
    model: torch.nn.Module, path: Path, tokenizer_dir: Path, max_shard_size: str | None = None
) -> Checkpoint:
    model.eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return Checkpoint(path, model)


@pytest.fixture(scope="session")
def hf_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path
) -> dict[str, Checkpoint]:
    """llama (GQA + llama3 RoPE scaling), qwen2 (qkv bias, tied embeddings), mistral, and the
    llama model again saved in several shards. Each folder gets the default model's tokenizer
    files so `ModelRunner` can open it (the tests feed token ids, never text)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **COMMON,
            num_key_value_heads=2,
            rope_theta=50000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            tie_word_embeddings=False,
        )
    )
    qwen2 = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=True)
    )
    mistral = transformers.MistralForCausalLM(
        transformers.MistralConfig(**COMMON, num_key_value_heads=1, sliding_window=None)
    )
    return {
        "llama": _save(llama, root / "llama", default_model_dir),
        "qwen2": _save(qwen2, root / "qwen2", default_model_dir),
        "mistral": _save(mistral, root / "mistral", default_model_dir),
        "llama_sharded": _save(llama, root / "sharded", default_model_dir, max_shard_size="100KB"),
    }


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in default model written to a tmp folder (no cache folder involved)."""
    folder = tmp_path_factory.mktemp("default-model")
    write_default_model(folder, SEED)
    return folder
