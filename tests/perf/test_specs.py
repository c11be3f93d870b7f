"""Hardware and model specs: the registries, the figures they derive, and their validation."""

from __future__ import annotations

import dataclasses

import pytest

from hyperflexis.perf.specs import (
    HardwareSpec,
    ModelSpec,
    hardware_names,
    hardware_spec,
    kv_cache_tokens,
    model_names,
    model_spec,
)


def test_registries_list_the_cli_names() -> None:
    assert hardware_names() == ["a100-80gb", "ascend-910b", "h100-sxm", "h200"]
    assert model_names() == ["llama-3.1-70b", "llama-3.1-8b", "qwen2.5-14b", "qwen2.5-32b"]


def test_alias_and_case() -> None:
    assert hardware_spec("h100") is hardware_spec("h100-sxm")
    assert hardware_spec("H200").name == "h200"
    assert model_spec("Llama-3.1-8B").name == "llama-3.1-8b"


@pytest.mark.parametrize(("lookup", "name"), [(hardware_spec, "tpu-v5"), (model_spec, "gpt-5")])
def test_unknown_names_list_known_ones(lookup: object, name: str) -> None:
    with pytest.raises(ValueError, match=r"known: .*h100|known: .*llama-3\.1-8b"):
        lookup(name)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "published_params"),
    [
        ("llama-3.1-8b", 8.03e9),
        ("qwen2.5-14b", 14.7e9),
        ("qwen2.5-32b", 32.5e9),
        ("llama-3.1-70b", 70.6e9),
    ],
)
def test_parameter_counts_match_the_model_cards(name: str, published_params: float) -> None:
    assert model_spec(name).num_params == pytest.approx(published_params, rel=0.01)


def test_llama_8b_derived_sizes() -> None:
    spec = model_spec("llama-3.1-8b")
    assert spec.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB
    assert spec.weight_bytes == spec.num_params * 2
    assert spec.tensor_parallel == 1


def test_70b_defaults_to_four_way_tensor_parallel() -> None:
    spec = model_spec("llama-3.1-70b")
    assert spec.tensor_parallel == 4
    assert spec.kv_bytes_per_token_per_gpu == spec.kv_bytes_per_token / 4
    assert model_spec("llama-3.1-70b", tensor_parallel=8).tensor_parallel == 8
    # 8 KV heads over 16 ranks: each rank keeps a whole (replicated) head.
    sixteen = spec.with_tensor_parallel(16)
    assert sixteen.kv_bytes_per_token_per_gpu == spec.kv_bytes_per_token / 8


def test_kv_cache_tokens() -> None:
    h100 = hardware_spec("h100")
    tokens = kv_cache_tokens(h100, model_spec("llama-3.1-8b"))
    assert 300_000 < tokens < 500_000  # ~55 GiB of 128 KiB tokens
    assert kv_cache_tokens(h100, model_spec("llama-3.1-70b", tensor_parallel=1)) == 0
    assert kv_cache_tokens(hardware_spec("h200"), model_spec("llama-3.1-70b")) > tokens


def test_from_hf_config_counts_tied_embeddings_once() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "torch_dtype": "float32",
    }
    untied = ModelSpec.from_hf_config(config, name="tiny")
    tied = ModelSpec.from_hf_config({**config, "tie_word_embeddings": True}, name="tiny")
    assert untied.num_params - tied.num_params == 100 * 64
    assert untied.head_dim == 16 and untied.dtype_bytes == 4
    per_layer = 64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert untied.num_params == 2 * per_layer + 2 * 100 * 64 + 64


def test_from_hf_config_names_the_missing_field() -> None:
    with pytest.raises(ValueError, match="'intermediate_size'"):
        ModelSpec.from_hf_config(
            {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 9}
        )


def test_invalid_specs_name_the_field() -> None:
    with pytest.raises(ValueError, match="'peak_flops'"):
        dataclasses.replace(hardware_spec("h100"), peak_flops=0.0)
    with pytest.raises(ValueError, match="'flops_efficiency'"):
        dataclasses.replace(hardware_spec("h100"), flops_efficiency=1.5)
    with pytest.raises(ValueError, match="'tensor_parallel'"):
        model_spec("llama-3.1-8b", tensor_parallel=3)  # 32 heads do not split 3 ways
    with pytest.raises(ValueError, match="'num_layers'"):
        dataclasses.replace(model_spec("llama-3.1-8b"), num_layers=0)


def test_every_hardware_spec_is_self_consistent() -> None:
    for name in hardware_names():
        spec = hardware_spec(name)
        assert isinstance(spec, HardwareSpec)
        # D2D from a peer is the point of HyperFlexis' fast scaling: it must beat the disk.
        assert spec.d2d_weight_bandwidth_bytes_s > 10 * spec.disk_bandwidth_bytes_s
        assert spec.price_per_hour > 0
