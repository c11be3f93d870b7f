"""Fault-injecting KV transports for tests: `shm` whose reads fail or stall on demand, chosen by
name like any transport (`InstanceSpec.kv_transport`, `--kv-transport`), so a real instance
process hits a real failure path. The bytes are copied as by `shm`; only the outcome is forced.

- `faulty`: every read fails (a `TransferError` once polled).
- `faulty-half`: every second read of a reader fails (the 2nd, 4th, ...).
- `faulty-slow`: every read completes, but only `SLOW_READ_S` after it started (longer than a
  test's `kv_transfer_timeout_s`, so the reader gives up and recomputes, then sees it end).
"""

from __future__ import annotations

import time
from typing import ClassVar

from hyperflexis.transfer.base import KV_TRANSPORTS, Transfer, TransferError
from hyperflexis.transfer.shm import ShmTransport

SLOW_READ_S = 2.0


class _FaultyShm(ShmTransport):
    fail_every: ClassVar[int | None] = None  # the n-th, 2n-th, ... read fails
    delay_s: ClassVar[float] = 0.0  # a read is done this long after it started

    def __init__(self) -> None:
        super().__init__()
        self.num_reads = 0
        self._started_s: dict[int, float] = {}

    def _start(self, transfer: Transfer) -> None:
        super()._start(transfer)
        self.num_reads += 1
        self._started_s[id(transfer)] = time.monotonic()
        every = self.fail_every
        transfer.state = (transfer.state, every is not None and self.num_reads % every == 0)

    def _progress(self, transfer: Transfer) -> bool:
        inner, fails = transfer.state
        transfer.state = inner
        try:
            if not super()._progress(transfer):
                return False
        finally:
            transfer.state = (inner, fails)
        if time.monotonic() - self._started_s[id(transfer)] < self.delay_s:
            return False
        del self._started_s[id(transfer)]
        if fails:
            raise TransferError(f"{self.name}: injected failure of read {self.num_reads}")
        return True

    def _block(self, transfer: Transfer, timeout_s: float) -> None:
        time.sleep(min(timeout_s, 0.001))


@KV_TRANSPORTS.register
class FaultyTransport(_FaultyShm):
    name = "faulty"
    fail_every = 1


@KV_TRANSPORTS.register
class HalfFaultyTransport(_FaultyShm):
    name = "faulty-half"
    fail_every = 2


@KV_TRANSPORTS.register
class SlowTransport(_FaultyShm):
    name = "faulty-slow"
    delay_s = SLOW_READ_S
