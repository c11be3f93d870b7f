"""The fault-injecting transports: the bytes move as over `shm`, the outcome is forced (every read
failed, every second read failed, every read late)."""

from __future__ import annotations

import time

import pytest

from hyperflexis.transfer import TransferError, TransferTimeoutError, create_kv_transport
from hyperflexis.transfer.faulty import SLOW_READ_S
from tests.transfer.pools import FLOAT32, assert_blocks_equal, build_cache, fill


def _pair(name: str):  # type: ignore[no-untyped-def]
    owner, reader = create_kv_transport(name), create_kv_transport(name)
    source = build_cache(owner, FLOAT32)
    fill(source, seed=3)
    peer = owner.register(source)
    local = build_cache(reader, FLOAT32)
    reader.register(local)
    return owner, reader, peer, source, local


@pytest.mark.parametrize(
    ("name", "fails"), [("faulty", [True, True]), ("faulty-half", [False, True, False, True])]
)
def test_reads_fail_as_named(name: str, fails: list[bool]) -> None:
    owner, reader, peer, source, local = _pair(name)
    try:
        for fail in fails:
            if fail:
                with pytest.raises(TransferError, match="injected failure"):
                    reader.read(peer, [1, 2], [4, 5], timeout_s=5)
            else:
                reader.read(peer, [1, 2], [4, 5], timeout_s=5)
                assert_blocks_equal(local, source, [1, 2], [4, 5])
    finally:
        reader.close()
        owner.close()


def test_a_slow_read_ends_late_with_the_right_bytes() -> None:
    owner, reader, peer, source, local = _pair("faulty-slow")
    try:
        with pytest.raises(TransferTimeoutError):
            reader.read(peer, [3], [0], timeout_s=0.05)
        transfer = reader.start_read(peer, [6, 7], [2, 3])
        start = time.monotonic()
        reader.wait(transfer, timeout_s=SLOW_READ_S + 30)
        assert time.monotonic() - start >= SLOW_READ_S * 0.9
        assert_blocks_equal(local, source, [6, 7], [2, 3])
    finally:
        reader.close()
        owner.close()
