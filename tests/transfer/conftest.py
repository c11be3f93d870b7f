"""Every transfer test leaves /dev/shm and the process table as it found them."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

from hyperflexis.transfer.shm import SEGMENT_PREFIX, SHM_DIR


def _segments() -> set[str]:
    return {path.name for path in SHM_DIR.glob(f"{SEGMENT_PREFIX}*")}


@pytest.fixture(autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    before = _segments()
    yield
    assert _segments() == before, "a shared-memory segment was left in /dev/shm"
    assert multiprocessing.active_children() == [], "a child process was left running"
