"""`auto`, the per-link KV transport, between two real processes: a reader on the owner's node
reads over shm, one on another node (another `HYPERFLEXIS_NODE`) over torch-dist, both bit for
bit; pools of a fixed transport keep it on every link."""

from __future__ import annotations

import pytest

from hyperflexis.transfer import create_kv_transport
from hyperflexis.transfer.per_link import NODE_ENV, PerLinkHandle, link_transport
from tests.transfer.pools import (
    FLOAT32,
    OwnerProcess,
    assert_blocks_equal,
    build_cache,
    expected_cache,
)


@pytest.mark.parametrize(("reader_node", "expected"), [("node-a", "shm"), ("node-b", "torch-dist")])
def test_the_link_takes_shm_on_one_node_and_torch_dist_across(
    monkeypatch: pytest.MonkeyPatch, reader_node: str, expected: str
) -> None:
    monkeypatch.setenv(NODE_ENV, "node-a")
    owner = OwnerProcess("auto", [FLOAT32], seed=7)  # its environment says node-a
    try:
        monkeypatch.setenv(NODE_ENV, reader_node)
        (peer,) = owner.descriptors
        assert isinstance(peer.handle, PerLinkHandle) and peer.handle.node == "node-a"
        with create_kv_transport("auto") as reader:
            local = build_cache(reader, FLOAT32)
            mine = reader.register(local)
            assert link_transport(mine, peer) == expected
            remote_blocks, local_blocks = [3, 4, 5, 0], [1, 2, 3, 9]
            reader.read(peer, remote_blocks, local_blocks, timeout_s=30)
            assert_blocks_equal(local, expected_cache(FLOAT32, 7), remote_blocks, local_blocks)
    finally:
        owner.stop()


def test_a_fixed_transport_is_every_links_transport() -> None:
    with create_kv_transport("shm") as a, create_kv_transport("shm") as b:
        pool_a = a.register(build_cache(a, FLOAT32))
        pool_b = b.register(build_cache(b, FLOAT32))
        assert link_transport(pool_a, pool_b) == "shm"
