"""Every transport between two real processes: bit-exact reads of several layouts and block
lists, listening on loopback only, and an explicit error once the owner closes or is killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from hyperflexis.transfer import (
    KVTransport,
    PeerGoneError,
    TransferTimeoutError,
    create_kv_transport,
)
from hyperflexis.transfer.nixl import load_nixl
from hyperflexis.transfer.shm import unlink_orphaned_segments
from hyperflexis.transfer.torch_dist import TorchDistTransport
from tests.transfer.pools import (
    BFLOAT16,
    FLOAT32,
    OwnerProcess,
    assert_blocks_equal,
    build_cache,
    expected_cache,
)
from tests.transfer.test_shm import BLOCK_LISTS

TRANSPORTS = [
    "shm",
    "torch-dist",
    pytest.param(
        "nixl", marks=pytest.mark.skipif(load_nixl() is None, reason="nixl-cu12 not installed")
    ),
]


def listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets these processes listen on."""
    lines = subprocess.run(
        ["ss", "-tlnpH"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    return [line.split()[3] for line in lines if any(f"pid={pid}," in line for pid in pids)]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSPORTS)
def test_reads_another_process_pool_bit_for_bit_until_it_closes(name: str) -> None:
    shapes = [FLOAT32, BFLOAT16]
    owner = OwnerProcess(name, shapes, seed=11)
    readers: list[KVTransport] = []
    try:
        for index, shape in enumerate(shapes):
            reader = create_kv_transport(name)
            readers.append(reader)
            local = build_cache(reader, shape)
            reader.register(local)
            source = expected_cache(shape, seed=11 + index)
            for remote_blocks, local_blocks in BLOCK_LISTS:
                reader.read(owner.descriptors[index], remote_blocks, local_blocks, timeout_s=30)
                assert_blocks_equal(local, source, remote_blocks, local_blocks)
        if shutil.which("ss"):
            addresses = listening_addresses({os.getpid(), owner.process.pid})
            assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
            if name == "torch-dist":
                assert addresses  # the owner's store and both ends' gloo devices
        owner.stop()
        with pytest.raises(PeerGoneError):
            readers[0].read(owner.descriptors[0], [1], [1], timeout_s=30)
    finally:
        for reader in readers:
            reader.close()
        owner.kill()


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSPORTS)
def test_a_killed_owner_is_an_explicit_error(name: str) -> None:
    owner = OwnerProcess(name, [FLOAT32], seed=3)
    peer = owner.descriptors[0]
    try:
        with create_kv_transport(name) as reader:
            local = build_cache(reader, FLOAT32)
            reader.register(local)
            reader.read(peer, [0, 1], [0, 1], timeout_s=30)
            owner.kill()
            with pytest.raises(PeerGoneError):
                reader.read(peer, [2], [2], timeout_s=30)
    finally:
        owner.kill()
    if name == "shm":  # a killed owner cannot unlink: whoever reaps it does
        assert unlink_orphaned_segments() == [Path(peer.handle.path)]


@pytest.mark.slow
def test_a_stalled_torch_dist_owner_times_out() -> None:
    owner = OwnerProcess("torch-dist", [FLOAT32], seed=5)
    try:
        with TorchDistTransport(timeout_s=2.0) as reader:
            reader.register(build_cache(reader, FLOAT32))
            reader.read(owner.descriptors[0], [0], [0], timeout_s=30)
            os.kill(owner.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(TransferTimeoutError):
                    reader.read(owner.descriptors[0], [1], [1], timeout_s=30)
            finally:
                os.kill(owner.process.pid, signal.SIGCONT)
        owner.stop()
    finally:
        owner.kill()


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="NCCL needs two CUDA devices (one per rank)",
)
def test_torch_dist_moves_cuda_pools_over_nccl() -> None:
    owner = OwnerProcess("torch-dist", [BFLOAT16], seed=13, device="cuda:0")
    try:
        with create_kv_transport("torch-dist") as reader:
            local = build_cache(reader, BFLOAT16, device="cuda:1")
            reader.register(local)
            reader.read(owner.descriptors[0], [4, 0, 7], [1, 2, 3], timeout_s=60)
            assert_blocks_equal(local, expected_cache(BFLOAT16, seed=13), [4, 0, 7], [1, 2, 3])
        owner.stop()
    finally:
        owner.kill()
