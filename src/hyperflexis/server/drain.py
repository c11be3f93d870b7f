"""Graceful drain on SIGTERM (and a first Ctrl-C): stop admitting (503 with Retry-After, /health
503 "draining"), let the open requests finish within `--shutdown-timeout-s`, end the rest with
proper errors (a 503 before any output, an error event and [DONE] in a stream), then stop the
HTTP server; `serve` then stops every instance process and exits 0. A second signal stops at
once, as uvicorn's own handling does."""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn

from hyperflexis.server.core import ServingCore

logger = logging.getLogger("hyperflexis.server.drain")
POLL_S = 0.05  # how often the drain looks whether the open requests are done


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM/SIGINT drains `core` instead of closing at once."""

    def __init__(self, config: uvicorn.Config, core: ServingCore, shutdown_timeout_s: float):
        super().__init__(config)
        self.core = core
        self.shutdown_timeout_s = shutdown_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self.drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.core.draining or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self.core.draining = True  # at once: nothing new is admitted from here on
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self.drain_task = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        core = self.core
        core.draining = True
        logger.warning(
            "draining: %d open requests get %.0f s to finish",
            len(core.streams),
            self.shutdown_timeout_s,
        )
        deadline = time.monotonic() + self.shutdown_timeout_s
        while core.streams and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        if core.streams:
            logger.warning("drain timed out: ending %d open requests", len(core.streams))
            core.fail_all("the server is shutting down")
        await asyncio.sleep(POLL_S)  # let the responses' last events go out
        self.should_exit = True
