"""Every transfer test leaves /dev/shm and the process table as it found them."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

from hyperflexis.transfer.shm import SEGMENT_PREFIX, SHM_DIR
from hyperflexis.transfer.weights import WEIGHT_SEGMENT_PREFIX


def _segments() -> set[str]:
    return {
        path.name
        for prefix in (SEGMENT_PREFIX, WEIGHT_SEGMENT_PREFIX)
        for path in SHM_DIR.glob(f"{prefix}*")
    }


@pytest.fixture(autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    before = _segments()
    yield
    assert _segments() == before, "a shared-memory segment was left in /dev/shm"
    assert multiprocessing.active_children() == [], "a child process was left running"
