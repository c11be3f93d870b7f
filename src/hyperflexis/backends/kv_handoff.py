"""An instance process's half of the P/D hand-off (DESIGN.md §10.1), beside its loop: the KV pool
registered with the instance's transport; on a decode instance, the pulls in flight (started on
`ResumeRequest`, polled every loop iteration, never awaited); on a prefill instance, the leases
its finished prompts hold, reported ready and expired.

A pull that fails, or outlives `kv_transfer_timeout_s`, makes the request recompute here. Blocks a
transport may still be writing (a timed-out or aborted pull) are set aside, pinned under their own
key, until the transport says it is done with them: they are never handed to another request
while a late copy could land in them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from hyperflexis.backends.messages import HandoffDone, KVReady, ResumeRequest
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.core.request import FinishReason
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.engine.kv_cache import KVCache
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.engine.resume import Resume
from hyperflexis.scheduler.base import NoRoomForKV
from hyperflexis.transfer import KVTransport, PoolDescriptor, Transfer, TransferError
from hyperflexis.transfer import create_kv_transport as _create

# Roles whose pools register with a transport. A collocated ("mixed") instance does not unless
# its spec says so (`kv_pool_always`: a scaling server migrates drains' decodes): its pool
# would move to /dev/shm (or open a listener) for peers it never has; a hand-off sent to it
# recomputes instead.
KV_ROLES = ("prefill", "decode")
ORPHAN_POLL_S = 0.005  # how often an idle instance polls the pulls it abandoned
PREFILLED = FinishReason.PREFILLED.value


def open_transport(spec: InstanceSpec) -> KVTransport | None:
    """The instance's KV transport (`spec.kv_transport`), or None for a collocated instance."""
    if spec.scheduler_config.role not in KV_ROLES and not spec.kv_pool_always:
        return None
    return _create(spec.kv_transport)


@dataclass(slots=True)
class _Pull:
    transfer: Transfer
    started_s: float


class KVHandoffs:
    """The registered pool, the pulls in flight and the leases to report, for one instance."""

    def __init__(
        self,
        engine: LLMEngine,
        timeout_s: float,
        transport: KVTransport | None = None,
        kv_cache: KVCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`kv_cache`: the engine's, built on `transport.allocate`'s memory (with a transport;
        without one the instance pulls nothing and registers nothing)."""
        self.engine = engine
        self.transport = transport
        self.timeout_s = timeout_s
        self.clock = clock
        self.pool: PoolDescriptor | None = None
        if transport is not None:
            if kv_cache is None:
                raise ValueError("a KV transport needs the KV cache to register")
            self.pool = transport.register(kv_cache)
        self._pulls: dict[str, _Pull] = {}
        self._orphans: dict[str, Transfer] = {}  # pinned-blocks key -> its unfinished transfer
        self._keys = itertools.count()
        self._freed = False  # set-aside blocks went back to the pool since `take_freed`

    # -- decode side ------------------------------------------------------------------------

    def resume(self, command: ResumeRequest) -> list[HandoffDone]:
        """Take over a request: pull its KV when it has some, else recompute. Returns the
        hand-offs already ended (a pull that could not start). ValueError: an invalid request."""
        kv = command.kv
        resume = Resume(
            command.request_id,
            command.prompt_token_ids,
            command.output_token_ids,
            command.sampling_params,
            command.slo,
            age_s=command.age_s,
            ttft_s=command.ttft_s,
            queue_s=command.queue_s,
            kv_tokens=0 if kv is None else kv.num_tokens,
        )
        if kv is None:
            self.engine.resume(resume)
            return []
        if self.transport is None:
            return [self._recompute(resume, "this instance has no KV pool (collocated role)")]
        try:
            blocks = self.engine.resume(resume)
        except NoRoomForKV as exc:
            return [self._recompute(resume, str(exc))]
        start_s = self.clock()
        try:
            transfer = self.transport.start_read(kv.pool, kv.block_ids, blocks)
        except TransferError as exc:
            self.engine.kv_failed(command.request_id)
            return [_failed(command.request_id, start_s, self.clock(), exc)]
        self._pulls[command.request_id] = _Pull(transfer, start_s)
        return []

    def _recompute(self, resume: Resume, why: str) -> HandoffDone:
        self.engine.resume(dataclasses.replace(resume, kv_tokens=0))
        return HandoffDone(resume.request_id, False, 0.0, 0, why)

    def poll(self) -> list[HandoffDone]:
        """Advance every pull; the hand-offs that ended (done, failed or timed out)."""
        ended = []
        for request_id, pull in list(self._pulls.items()):
            error: str | None = None
            try:
                done = self.transport is not None and self.transport.poll(pull.transfer)
            except TransferError as exc:
                done, error = True, f"{type(exc).__name__}: {exc}"
            now = self.clock()
            if not done and now - pull.started_s <= self.timeout_s:
                continue
            del self._pulls[request_id]
            if done and error is None:
                self.engine.kv_arrived(request_id)
                ended.append(
                    HandoffDone(request_id, True, now - pull.started_s, pull.transfer.num_bytes)
                )
                continue
            if not done:
                self._set_aside(request_id, pull.transfer)
                error = f"TransferTimeoutError: not done after {self.timeout_s} s"
            self.engine.kv_failed(request_id)
            ended.append(HandoffDone(request_id, False, now - pull.started_s, 0, error))
        self._poll_orphans()
        return ended

    def abort(self, request_id: str) -> None:
        """The request is being aborted: forget its pull, setting its blocks aside if the
        transport may still write them."""
        pull = self._pulls.pop(request_id, None)
        if pull is not None and not pull.transfer.done:
            self._set_aside(request_id, pull.transfer)

    def _set_aside(self, request_id: str, transfer: Transfer) -> None:
        key = f"{request_id}\0pull-{next(self._keys)}"
        self.engine.scheduler.kv.pin(request_id, key)
        self._orphans[key] = transfer

    def _poll_orphans(self) -> None:
        for key, transfer in list(self._orphans.items()):
            try:
                done = self.transport is None or self.transport.poll(transfer)
            except TransferError:
                done = True  # it failed: nothing writes those blocks any more
            if done:
                del self._orphans[key]
                self.engine.scheduler.kv.unpin(key)
                self._freed = True

    def take_freed(self) -> bool:
        """Whether set-aside blocks were freed since the last call (the load changed)."""
        freed, self._freed = self._freed, False
        return freed

    # -- prefill side -----------------------------------------------------------------------

    def kv_ready(self, outputs: list[RequestOutput]) -> list[KVReady]:
        """For this step's prefilled requests, their leased blocks (a duration to expiry)."""
        leases = {lease.request_id: lease for lease in self.engine.scheduler.leases.take_new()}
        now = self.clock()
        ready = []
        for output in outputs:
            lease = leases.get(output.request_id)
            if lease is None or output.outputs[0].finish_reason != PREFILLED:
                continue
            metrics = output.metrics
            ready.append(
                KVReady(
                    output.request_id,
                    lease.block_ids,
                    lease.num_tokens,
                    lease_s=max(0.0, lease.expires_s - now),
                    queue_s=metrics.queue_s or 0.0,
                    ttft_s=metrics.ttft_s or 0.0,
                )
            )
        return ready

    # -- the loop's timing ------------------------------------------------------------------

    def wake_in_s(self) -> float | None:
        """How long an idle loop may wait for a command before something here is due: a lease
        to expire, an abandoned pull to poll. None: nothing pending."""
        due = self.engine.scheduler.leases.next_expiry_s - self.clock()
        if self._pulls or self._orphans:
            due = min(due, ORPHAN_POLL_S)
        return None if math.isinf(due) else max(0.0, due)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _failed(request_id: str, start_s: float, now: float, exc: Exception) -> HandoffDone:
    return HandoffDone(request_id, False, now - start_s, 0, f"{type(exc).__name__}: {exc}")
