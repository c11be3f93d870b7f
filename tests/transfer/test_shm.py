"""`shm` within one process: the pool is views of a /dev/shm file, reads are bit-exact, a closed
owner is an explicit error, and segments go when their owner closes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyperflexis.transfer import PeerGoneError, TransferError, create_kv_transport, shm
from hyperflexis.transfer.shm import ShmTransport
from tests.transfer.pools import (
    BFLOAT16,
    FLOAT32,
    Shape,
    assert_blocks_equal,
    build_cache,
    expected_cache,
    fill,
)

BLOCK_LISTS = [
    ([3], [0]),  # one block
    ([2, 3, 4, 5], [5, 6, 7, 8]),  # one run
    ([7, 1, 4, 0], [2, 8, 3, 0]),  # out of order, non-contiguous on both sides
    ([0, 1, 5, 6, 8], [8, 7, 1, 2, 0]),  # runs on one side only
]


@pytest.mark.parametrize("on_thread", [False, True], ids=["inline", "copy-thread"])
@pytest.mark.parametrize("shape", [FLOAT32, BFLOAT16], ids=lambda s: s.dtype)
@pytest.mark.parametrize(("remote_blocks", "local_blocks"), BLOCK_LISTS)
def test_blocks_read_equal_the_source_bit_for_bit(
    shape: Shape,
    remote_blocks: list[int],
    local_blocks: list[int],
    on_thread: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if on_thread:
        monkeypatch.setattr(shm, "INLINE_COPY_BYTES", 0)
    with create_kv_transport("shm") as owner, create_kv_transport("shm") as reader:
        source = build_cache(owner, shape)
        fill(source, seed=7)
        peer = owner.register(source)
        local = build_cache(reader, shape)
        reader.register(local)
        untouched = [b for b in range(shape.num_blocks) if b not in local_blocks]
        transfer = reader.start_read(peer, remote_blocks, local_blocks)
        assert (transfer.state is not None) == on_thread
        reader.wait(transfer, timeout_s=30)
        assert transfer.done and reader.poll(transfer)
        assert transfer.num_bytes == len(remote_blocks) * peer.layout.bytes_per_block
        assert_blocks_equal(local, expected_cache(shape, seed=7), remote_blocks, local_blocks)
        assert all(not t[untouched].any() for t in (*local.key_caches, *local.value_caches))


def test_the_pool_is_a_view_of_the_segment() -> None:
    with create_kv_transport("shm") as owner, create_kv_transport("shm") as reader:
        source = build_cache(owner, FLOAT32)
        peer = owner.register(source)
        local = build_cache(reader, FLOAT32)
        reader.register(local)
        source.key_caches[2][5].fill_(3.5)  # written after registration, seen by the reader
        reader.read(peer, [5], [0], timeout_s=30)
        assert torch.equal(local.key_caches[2][0], torch.full_like(local.key_caches[2][0], 3.5))
        segment = Path(peer.handle.path)
        assert segment.stat().st_size == peer.handle.num_bytes


def test_a_closed_owner_is_an_explicit_error_and_its_segment_is_gone() -> None:
    with create_kv_transport("shm") as reader:
        reader.register(build_cache(reader, FLOAT32))
        owner = create_kv_transport("shm")
        peer = owner.register(build_cache(owner, FLOAT32))
        reader.read(peer, [1], [1], timeout_s=30)  # mapped now
        owner.close()
        owner.close()  # idempotent
        assert not Path(peer.handle.path).exists()
        with pytest.raises(PeerGoneError, match="was closed"):
            reader.start_read(peer, [1], [1])


def test_only_host_memory_and_one_pool_per_transport() -> None:
    with ShmTransport() as transport:
        with pytest.raises(TransferError, match="host memory"):
            transport.allocate(1024, torch.device("meta"))
        with pytest.raises(TransferError, match="allocate"):
            transport.register(expected_cache(FLOAT32, seed=0))  # not built on the segment
        transport.allocate(1024, torch.device("cpu"))
        with pytest.raises(TransferError, match="already allocated"):
            transport.allocate(1024, torch.device("cpu"))


def test_an_unclosed_transport_unlinks_its_segment_when_collected() -> None:
    transport = ShmTransport()
    peer = transport.register(build_cache(transport, FLOAT32))
    path = Path(peer.handle.path)
    assert path.exists()
    del transport
    assert not path.exists()


def test_pools_not_laid_end_to_end_are_copied_layer_by_layer() -> None:
    with create_kv_transport("shm") as owner, ShmTransport() as reader:
        source = build_cache(owner, BFLOAT16)
        fill(source, seed=2)
        peer = owner.register(source)
        local = build_cache(reader, BFLOAT16)
        reader.register(local)
        reader._mapping(peer).stacked = None  # as if the owner's layers were interleaved
        reader.read(peer, [8, 0, 1, 2], [0, 4, 5, 6], timeout_s=30)
        assert_blocks_equal(local, expected_cache(BFLOAT16, seed=2), [8, 0, 1, 2], [0, 4, 5, 6])
