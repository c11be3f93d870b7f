"""The pipelined segment check gives the one-shot digest of every span, across chunk borders."""

from __future__ import annotations

import mmap

import pytest
import torch

from hyperflexis.transfer import checksums
from hyperflexis.transfer.checksums import digest, span_digests
from hyperflexis.transfer.shm import tensor_over


def test_span_digests_equal_the_one_shot_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checksums, "CHUNK_BYTES", 8192)  # many chunks, borders inside spans
    num_bytes = 10 * 8192 + 100
    memory = mmap.mmap(-1, num_bytes)
    segment = tensor_over(memory)
    segment.copy_(torch.randint(0, 256, (num_bytes,), dtype=torch.uint8))
    spans = [(0, 5000), (5000, 0), (5056, 3 * 8192 + 17), (40960, num_bytes - 40960)]
    want = [digest(segment[offset : offset + size]) for offset, size in spans]
    assert span_digests(segment, spans) == want
    assert span_digests(segment, list(reversed(spans))) == list(reversed(want))
    flipped = segment.clone()
    flipped[6000] ^= 1
    assert digest(flipped[5056 : 5056 + 3 * 8192 + 17]) != want[2]
    del segment
    memory.close()
