"""Config parsing and loader errors: every failure names what is wrong and where."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyperflexis.engine import ModelConfig, ModelRunner, load_model
from hyperflexis.engine.config import Llama3RopeScaling
from tests.engine.checkpoints import Checkpoint

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 512,
}


def _copy(checkpoint: Checkpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint.path, tmp_path / "model"))


def test_config_parses_transformers_4_layout() -> None:
    config = ModelConfig.from_dict(
        {
            **LLAMA_CONFIG,
            "num_key_value_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "eos_token_id": [128001, 128009],
            "torch_dtype": "bfloat16",
        }
    )
    assert config.head_dim == 16 and config.num_kv_heads == 2 and config.num_queries_per_kv == 2
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 8192)
    assert config.eos_token_ids == (128001, 128009)
    assert config.torch_dtype == "bfloat16" and not config.qkv_bias


def test_config_qwen2_has_qkv_bias_and_mistral_window_caps_context() -> None:
    qwen = ModelConfig.from_dict({**LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"]})
    assert qwen.qkv_bias and qwen.eos_token_ids == ()
    mistral = ModelConfig.from_dict(
        {**LLAMA_CONFIG, "architectures": ["MistralForCausalLM"], "sliding_window": 128}
    )
    assert mistral.max_model_len == 128 and mistral.max_position_embeddings == 512


def test_unsupported_architecture_is_named() -> None:
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*LlamaForCausalLM"):
        ModelConfig.from_dict({**LLAMA_CONFIG, "architectures": ["GPT2LMHeadModel"]})


def test_unsupported_rope_scaling_is_named() -> None:
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_dict({**LLAMA_CONFIG, "rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_missing_config_field_is_named() -> None:
    raw = dict(LLAMA_CONFIG)
    del raw["intermediate_size"]
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelConfig.from_dict(raw)


def test_missing_folder_and_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope", "float32", "cpu")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(tmp_path, "float32", "cpu")


def test_missing_weights(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights.*model\.safetensors"):
        load_model(folder, "float32", "cpu")


def test_missing_shard(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama_sharded"], tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_model(folder, "float32", "cpu")


def test_truncated_safetensors(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cannot read safetensors file .*model\.safetensors"):
        load_model(folder, "float32", "cpu")


def test_garbage_safetensors(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="cannot read safetensors file"):
        load_model(folder, "float32", "cpu")


def test_missing_tensor_is_named(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors", {"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(folder, "float32", "cpu")


def test_wrong_shape_is_named(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, folder / "model.safetensors", {"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*model\.safetensors.*\(3,\)"):
        load_model(folder, "float32", "cpu")


def test_extra_tensors_are_ignored(hf_checkpoints: dict[str, Checkpoint], tmp_path: Path) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(weights, folder / "model.safetensors", {"format": "pt"})
    config, model = load_model(folder, "bf16", "cpu")
    assert config.architecture == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.bfloat16


def test_unsupported_architecture_in_checkpoint(
    hf_checkpoints: dict[str, Checkpoint], tmp_path: Path
) -> None:
    folder = _copy(hf_checkpoints["llama"], tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    raw["architectures"] = ["FalconForCausalLM"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="FalconForCausalLM"):
        load_model(folder, "float32", "cpu")


@pytest.mark.parametrize("dtype", ["float8", "int8", "half"])
def test_invalid_dtype_name(dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))  # never touch the real cache
    with pytest.raises(ValueError, match="dtype"):
        ModelRunner(None, dtype=dtype)
