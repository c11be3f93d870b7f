from __future__ import annotations

import pytest
import torch

from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.kv_cache import KVCache, bytes_per_block, kv_cache_bytes

CPU = torch.device("cpu")


@pytest.fixture
def config() -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        }
    )


def test_without_storage_each_layer_has_its_own_zeroed_tensors(config: ModelConfig) -> None:
    cache = KVCache(config, num_blocks=5, block_size=4, dtype=torch.float32, device=CPU)
    tensors = [*cache.key_caches, *cache.value_caches]
    assert len(tensors) == 6
    assert all(t.shape == (5, 4, 2, 8) and not t.any() for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 6


def test_with_storage_the_tensors_are_zeroed_views_of_it(config: ModelConfig) -> None:
    num_bytes = kv_cache_bytes(config, 5, 4, torch.bfloat16)
    assert num_bytes == 5 * bytes_per_block(config, 4, torch.bfloat16)
    storage = torch.full((num_bytes + 8,), 0xFF, dtype=torch.uint8)  # larger than needed is fine
    cache = KVCache(config, 5, 4, torch.bfloat16, CPU, storage=storage)
    assert all(not t.any() for t in (*cache.key_caches, *cache.value_caches))
    assert cache.key_caches[0].data_ptr() == storage.data_ptr()
    layer_bytes = num_bytes // 6
    assert cache.value_caches[0].data_ptr() == storage.data_ptr() + layer_bytes
    assert cache.key_caches[1].data_ptr() == storage.data_ptr() + 2 * layer_bytes
    keys = torch.ones(2, 2, 8, dtype=torch.bfloat16)
    cache.write(2, keys, 2 * keys, torch.tensor([0, 7]))  # slot 7: block 1, offset 3
    assert storage[4 * layer_bytes :].view(torch.bfloat16)[0] == 1
    assert cache.value_caches[2][1, 3].eq(2).all()
    assert storage[-8:].eq(0xFF).all()  # beyond the cache: untouched


def test_a_storage_that_cannot_hold_the_cache_is_refused(config: ModelConfig) -> None:
    num_bytes = kv_cache_bytes(config, 5, 4, torch.float32)
    with pytest.raises(ValueError, match="needs"):
        KVCache(
            config, 5, 4, torch.float32, CPU, storage=torch.zeros(num_bytes - 1, dtype=torch.uint8)
        )
    with pytest.raises(ValueError, match="uint8"):
        KVCache(config, 5, 4, torch.float32, CPU, storage=torch.zeros(num_bytes))
    with pytest.raises(ValueError, match="uint8"):
        KVCache(
            config, 5, 4, torch.float32, CPU, storage=torch.zeros(2, num_bytes, dtype=torch.uint8)
        )
