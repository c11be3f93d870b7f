"""The paged KV cache tensors. Which blocks a request owns is decided by the scheduler's
`KVBlockManager`; this module only holds the memory and writes new keys and values into slots."""

from __future__ import annotations

import torch

from hyperflexis.engine.config import ModelConfig


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one KV block takes across all layers, keys and values together."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return (
        2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * element_bytes
    )


def kv_cache_bytes(
    config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype
) -> int:
    """Bytes a whole cache of `num_blocks` takes: the size a caller-provided `storage` needs."""
    return num_blocks * bytes_per_block(config, block_size, dtype)


def num_blocks_for_budget(
    config: ModelConfig, kv_cache_bytes: int, block_size: int, dtype: torch.dtype
) -> int:
    """How many whole blocks fit in `kv_cache_bytes`; at least one or a ValueError."""
    per_block = bytes_per_block(config, block_size, dtype)
    num_blocks = kv_cache_bytes // per_block
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_bytes={kv_cache_bytes} is smaller than one KV block ({per_block} bytes)"
        )
    return num_blocks


class KVCache:
    """Per layer, keys and values of shape [num_blocks, block_size, num_kv_heads, head_dim].

    Slot `s` of a layer is block `s // block_size`, offset `s % block_size`. The tensors start
    zeroed so that padded (masked) reads never pull NaN bit patterns into attention sums.

    `storage`, when given, is a flat uint8 tensor of at least `kv_cache_bytes(...)` bytes on
    `device` that the tensors become views of (layer 0 keys, layer 0 values, layer 1 keys, ...):
    a KV transport places the pool in memory a peer can read, e.g. POSIX shared memory.
    """

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        storage: torch.Tensor | None = None,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        if storage is None:
            tensors = [
                torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * config.num_layers)
            ]
        else:
            tensors = _views_of(storage, 2 * config.num_layers, shape, dtype, device)
        self.key_caches = tensors[0::2]
        self.value_caches = tensors[1::2]
        # Reused destinations for gathering blocks before attention. A fresh multi-megabyte
        # tensor per layer costs more in page faults than the copy itself on CPU. They hold one
        # layer's worth of the blocks a step attends to (padding included), so at most about
        # 1/num_layers of the cache plus padding.
        self._gather_keys = torch.empty((0, *shape[1:]), dtype=dtype, device=device)
        self._gather_values = torch.empty((0, *shape[1:]), dtype=dtype, device=device)
        # Flat [num_slots, num_kv_heads, head_dim] views share storage with the tensors above.
        self._flat_keys = [t.view(-1, shape[2], shape[3]) for t in self.key_caches]
        self._flat_values = [t.view(-1, shape[2], shape[3]) for t in self.value_caches]

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def flat(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values as [num_slots, num_kv_heads, head_dim] views."""
        return self._flat_keys[layer], self._flat_values[layer]

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, slot_mapping: torch.Tensor
    ) -> None:
        """Store `keys`/`values` [num_tokens, num_kv_heads, head_dim] at `slot_mapping`."""
        self._flat_keys[layer].index_copy_(0, slot_mapping, keys)
        self._flat_values[layer].index_copy_(0, slot_mapping, values)

    def gather(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `blocks` in order, as [len(blocks) * block_size, num_kv_heads,
        head_dim]. The result lives in scratch space that the next `gather` overwrites."""
        num = int(blocks.shape[0])
        if self._gather_keys.shape[0] < num:
            # Grow geometrically, but overshoot no further than the cache's own size.
            size = max(num, min(2 * self._gather_keys.shape[0], self.num_blocks))
            shape = (size, *self._gather_keys.shape[1:])
            self._gather_keys = self._gather_keys.new_empty(shape)
            self._gather_values = self._gather_values.new_empty(shape)
        keys = torch.index_select(self.key_caches[layer], 0, blocks, out=self._gather_keys[:num])
        values = torch.index_select(
            self.value_caches[layer], 0, blocks, out=self._gather_values[:num]
        )
        return keys.flatten(0, 1), values.flatten(0, 1)


def _views_of(
    storage: torch.Tensor,
    num_tensors: int,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """`num_tensors` zeroed tensors of `shape` laid end to end in `storage` (uint8, flat)."""
    tensor_bytes = shape[0] * shape[1] * shape[2] * shape[3] * dtype.itemsize
    if storage.dtype != torch.uint8 or storage.dim() != 1 or not storage.is_contiguous():
        raise ValueError("storage must be a flat contiguous uint8 tensor")
    if storage.device != device:
        raise ValueError(f"storage is on {storage.device}, the cache on {device}")
    if storage.numel() < num_tensors * tensor_bytes:
        raise ValueError(
            f"storage holds {storage.numel()} bytes, the cache needs {num_tensors * tensor_bytes}"
        )
    views = []
    for index in range(num_tensors):
        chunk = storage[index * tensor_bytes : (index + 1) * tensor_bytes]
        views.append(chunk.view(dtype).view(shape).zero_())
    return views
