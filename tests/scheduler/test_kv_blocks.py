from __future__ import annotations

import pytest

from hyperflexis.scheduler import KVBlockManager, num_blocks_for


def test_allocate_grows_tables_and_free_returns_blocks() -> None:
    kv = KVBlockManager(num_blocks=8, block_size=4)
    assert kv.num_blocks_needed("a", 9) == 3
    table = kv.allocate("a", 9)
    assert len(table) == 3 and kv.num_free_blocks == 5
    assert kv.allocate("a", 12) == table and len(table) == 3  # fits the last block
    kv.allocate("a", 13)
    assert len(kv.block_table("a")) == 4
    assert kv.usage == pytest.approx(0.5)
    assert kv.free("a") == 4 and kv.num_free_blocks == 8
    assert kv.free("a") == 0


def test_exhaustion_raises_and_leaves_state_unchanged() -> None:
    kv = KVBlockManager(num_blocks=2, block_size=4)
    kv.allocate("a", 8)
    with pytest.raises(RuntimeError, match="exhausted"):
        kv.allocate("b", 1)
    assert kv.num_free_blocks == 0 and kv.block_table("b") == []


def test_blocks_are_not_shared() -> None:
    kv = KVBlockManager(num_blocks=6, block_size=2)
    a, b = kv.allocate("a", 6), kv.allocate("b", 6)
    assert not set(a) & set(b)


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0)])
def test_bad_sizes(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError):
        KVBlockManager(num_blocks, block_size)


@pytest.mark.parametrize(("num_tokens", "num_blocks"), [(0, 0), (1, 1), (16, 1), (17, 2), (48, 3)])
def test_num_blocks_for_counts_a_part_full_last_block(num_tokens: int, num_blocks: int) -> None:
    assert num_blocks_for(num_tokens, 16) == num_blocks
    kv = KVBlockManager(num_blocks=8, block_size=16)
    assert kv.blocks_for(num_tokens) == num_blocks
    if num_blocks:
        assert len(kv.allocate("a", num_tokens)) == num_blocks
