from __future__ import annotations

import dataclasses

import pytest
import torch

from hyperflexis.transfer import (
    KV_TRANSPORTS,
    LayoutMismatchError,
    PoolLayout,
    TransferError,
    create_kv_transport,
)
from hyperflexis.transfer.base import contiguous_runs, stacked_view
from tests.transfer.pools import BFLOAT16, FLOAT32, build_cache, expected_cache


def test_runs_merge_blocks_consecutive_on_both_sides() -> None:
    assert contiguous_runs([4, 5, 6, 9, 1], [0, 1, 2, 3, 7]) == [(4, 0, 3), (9, 3, 1), (1, 7, 1)]
    assert contiguous_runs([3, 2, 1], [0, 1, 2]) == [(3, 0, 1), (2, 1, 1), (1, 2, 1)]
    assert contiguous_runs([], []) == []


def test_layout_of_a_cache_and_its_sizes() -> None:
    with create_kv_transport("shm") as transport:
        layout = PoolLayout.of(build_cache(transport, BFLOAT16))
    assert layout == PoolLayout(
        num_blocks=9, block_size=8, num_layers=2, num_kv_heads=4, head_dim=16, dtype="bfloat16"
    )
    assert layout.torch_dtype == torch.bfloat16
    assert layout.layer_shape == (9, 8, 4, 16)
    assert layout.bytes_per_block == 2 * 2 * 8 * 4 * 16 * 2


def test_compatible_layouts_may_differ_only_in_num_blocks() -> None:
    base = PoolLayout(10, 4, 2, 2, 8, "float32")
    base.check_compatible(PoolLayout(99, 4, 2, 2, 8, "float32"))
    for other in (
        PoolLayout(10, 8, 2, 2, 8, "float32"),
        PoolLayout(10, 4, 3, 2, 8, "float32"),
        PoolLayout(10, 4, 2, 2, 8, "bfloat16"),
    ):
        with pytest.raises(LayoutMismatchError, match="layouts differ"):
            base.check_compatible(other)


def test_registry_lists_the_transports_and_refuses_unknown_names() -> None:
    assert {"shm", "torch-dist", "nixl"} <= set(KV_TRANSPORTS.names())
    with pytest.raises(ValueError, match="unknown KV transport 'carrier-pigeon'; known: "):
        create_kv_transport("carrier-pigeon")


def test_reads_are_checked_before_anything_moves() -> None:
    with create_kv_transport("shm") as owner, create_kv_transport("shm") as reader:
        peer = owner.register(build_cache(owner, FLOAT32))
        with pytest.raises(TransferError, match="no pool registered"):
            reader.start_read(peer, [0], [0])
        reader.register(build_cache(reader, FLOAT32))
        with pytest.raises(LayoutMismatchError, match="2 remote blocks for 1 local"):
            reader.start_read(peer, [0, 1], [0])
        with pytest.raises(LayoutMismatchError, match=r"remote block 12 outside 0\.\.11"):
            reader.start_read(peer, [12], [0])
        with pytest.raises(LayoutMismatchError, match="local block -1 outside"):
            reader.start_read(peer, [0], [-1])
        with pytest.raises(LayoutMismatchError, match="local blocks repeat"):
            reader.start_read(peer, [0, 1], [3, 3])
        with pytest.raises(TransferError, match="already registered"):
            reader.register(reader.pool)


def test_a_pool_of_another_dtype_or_transport_is_refused() -> None:
    with create_kv_transport("shm") as owner, create_kv_transport("shm") as reader:
        peer = owner.register(build_cache(owner, FLOAT32))
        reader.register(build_cache(reader, dataclasses.replace(FLOAT32, dtype="bfloat16")))
        with pytest.raises(LayoutMismatchError, match=r"local .*'bfloat16'.*peer .*'float32'"):
            reader.start_read(peer, [0], [0])
    foreign = dataclasses.replace(peer, transport="torch-dist")
    with create_kv_transport("shm") as reader:
        reader.register(build_cache(reader, FLOAT32))
        with pytest.raises(LayoutMismatchError, match="peer pool is 'torch-dist'"):
            reader.start_read(foreign, [0], [0])


def test_a_pool_built_on_storage_stacks_into_one_view() -> None:
    with create_kv_transport("shm") as transport:
        cache = build_cache(transport, FLOAT32)
        stacked = stacked_view(cache)
        assert stacked is not None and stacked.shape == (6, 12, 4 * 2 * 8)
        cache.value_caches[1][7].fill_(2.0)
        assert stacked[3, 7].eq(2.0).all() and stacked[2, 7].eq(0).all()
    assert stacked_view(expected_cache(FLOAT32, seed=0)) is None  # separate tensors
