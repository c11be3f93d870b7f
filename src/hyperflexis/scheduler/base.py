"""The instance scheduler's state and bookkeeping, shared by every policy.

A policy subclasses `Scheduler` and implements `schedule(now)`; everything else (admitting,
updating after a step, finishing, preempting, freeing KV) lives here once. Nothing here reads a
clock: the driver (engine loop or simulator) passes `now`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from hyperflexis.core.request import FinishReason, Request, RequestStatus
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.kv_blocks import KVBlockManager
from hyperflexis.scheduler.leases import Lease, LeaseTable
from hyperflexis.scheduler.output import ScheduledChunk, SchedulerOutput
from hyperflexis.scheduler.waiting import WaitingIndex


class NoRoomForKV(ValueError):
    """A hand-off's KV cannot be held now: too few free blocks (the caller may recompute)."""


class Scheduler(ABC):
    """Decides, each step, which tokens of which requests run. Subclasses are policies."""

    name: ClassVar[str]  # registry name
    needs_cost_model: ClassVar[bool] = False  # True: refuses to run without a latency model

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVBlockManager,
        cost_model: StepCostModel | None = None,
    ) -> None:
        if self.needs_cost_model and cost_model is None:
            raise ValueError(f"scheduling policy {self.name!r} needs a step latency model")
        self.config = config
        self.kv = kv
        self.cost_model = cost_model
        # To admit: new, preempted (no KV held), or resumed (KV computed elsewhere, possibly
        # already copied into its blocks here).
        # Change it only through _wait and _unwait: `waiting_index` mirrors it.
        self.waiting: list[Request] = []
        self.waiting_index = WaitingIndex(kv.block_size)
        self.running: list[Request] = []  # hold KV blocks
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        # P/D. Prefill role: finished prompts' blocks pinned for a decode peer. Decode side:
        # requests whose KV a peer is copying into their blocks -> tokens it covers.
        self.leases = LeaseTable(kv, config.kv_lease_s)
        self.receiving: dict[str, int] = {}
        self.num_preemptions = 0
        self.num_rejections = 0
        # Rejected by schedule(), reported by the next update().
        self._finished_in_schedule: list[Request] = []

    # -- the policy -------------------------------------------------------------------------

    @abstractmethod
    def schedule(self, now: float) -> SchedulerOutput:
        """Choose this step's batch. May preempt or reject requests; allocates the KV blocks the
        batch writes. Never exceeds the token budget, `max_num_seqs` or the KV capacity."""

    # What the simulator's decode fast-forward (sim/fast_forward.py) may assume of a step that
    # runs only decodes; a policy that decides such steps differently overrides these.

    def max_decodes_per_step(self) -> float:
        """Most decodes one step runs before the policy leaves one out for the token budget."""
        return self.config.max_num_batched_tokens

    def max_decode_only_step_s(self, num_decodes: int, tightest_tpot_s: float) -> float:
        """Longest step of `num_decodes` decodes alone (the tightest TPOT target among them
        `tightest_tpot_s`) that the policy runs without preempting one; inf: it does not look
        at time."""
        return math.inf

    # -- requests in and out ----------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a request. In the decode role a request arrives with its prompt's KV computed
        elsewhere (`num_computed_tokens > 0`); it gets blocks when admitted."""
        self._check_new(request)
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self._wait(request)

    def add_receiving(self, request: Request, num_kv_tokens: int) -> list[int]:
        """P/D, the decode side: hold blocks for the first `num_kv_tokens` tokens of `request`,
        whose KV a peer is about to copy in; it is not scheduled until `kv_arrived` (or
        `kv_failed`). Returns the blocks, in token order. ValueError when they are not free."""
        self._check_new(request)
        if not 0 < num_kv_tokens < request.num_tokens:
            raise ValueError(
                f"invalid KV hand-off: {num_kv_tokens} tokens of a request of {request.num_tokens}"
            )
        num_blocks = self.kv.blocks_for(num_kv_tokens)
        if not self.kv.can_allocate(num_blocks):
            raise NoRoomForKV(
                f"no room for the KV: {num_blocks} blocks, {self.kv.num_free_blocks} free"
            )
        table = list(self.kv.allocate(request.request_id, num_kv_tokens))
        request.status = RequestStatus.RECEIVING
        request.num_computed_tokens = 0
        self.requests[request.request_id] = request
        self.receiving[request.request_id] = num_kv_tokens
        return table

    def kv_arrived(self, request_id: str) -> bool:
        """The peer's KV is in the request's blocks: it is queued to decode (its deadlines
        unchanged). False when it is not receiving (aborted meanwhile)."""
        num_kv_tokens = self.receiving.pop(request_id, None)
        if num_kv_tokens is None:
            return False
        request = self.requests[request_id]
        request.num_computed_tokens = num_kv_tokens
        request.status = RequestStatus.WAITING
        self._wait(request)
        return True

    def kv_failed(self, request_id: str) -> bool:
        """The copy failed: free the blocks and queue the request to recompute its prompt and
        output here (deadlines unchanged). False when it is not receiving."""
        if self.receiving.pop(request_id, None) is None:
            return False
        self.kv.free(request_id)
        request = self.requests[request_id]
        request.status = RequestStatus.WAITING
        self._wait(request)
        return True

    def release_lease(self, request_id: str) -> bool:
        """Prefill role: the peer has the KV (or gave up on it): free the pinned blocks."""
        return self.leases.release(request_id)

    def expire_leases(self, now: float) -> list[str]:
        """Free the leases due by `now`; returns their request ids."""
        return self.leases.expire(now)

    def _check_new(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if not request.prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        max_len = request.num_prompt_tokens + request.sampling_params.max_tokens
        need = self.kv.blocks_for(max_len)
        if need > self.kv.num_blocks:
            # It could never finish: alone in the cache it would preempt itself forever.
            raise ValueError(
                f"prompt of {request.num_prompt_tokens} tokens plus max_tokens "
                f"{request.sampling_params.max_tokens} needs {need} KV blocks; "
                f"the cache has {self.kv.num_blocks}"
            )
        if (
            not self.config.chunked_prefill
            and request.num_prompt_tokens > self.config.max_num_batched_tokens
        ):
            raise ValueError(
                f"prompt of {request.num_prompt_tokens} tokens exceeds the step token budget "
                f"({self.config.max_num_batched_tokens}) and chunked prefill is off"
            )

    def abort_request(self, request_id: str, now: float) -> Request | None:
        """End a request at once and free its KV (a lease under its id too); None if it is
        unknown or already finished."""
        self.leases.release(request_id)
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, FinishReason.ABORTED, now)
        return request

    def migrate_out(self, request_id: str, now: float) -> Lease | None:
        """A drain's migration: the request leaves this scheduler to decode elsewhere, its
        computed tokens' KV pinned under a lease for the peer to pull (no lease when it holds
        no KV: preempted, the peer recomputes). ValueError unless it has output and is not
        receiving KV."""
        request = self.requests.get(request_id)
        if request is None or request.status is RequestStatus.RECEIVING:
            raise ValueError(f"{request_id!r} is not decoding here")
        if not request.output_token_ids:
            raise ValueError(f"{request_id!r} has no output yet: dispatch it again instead")
        lease = None
        if request.num_computed_tokens > 0 and self.kv.block_table(request_id):
            lease = self.leases.grant(request_id, request.num_computed_tokens, now)
        self._finish(request, FinishReason.ABORTED, now)
        return lease

    def finish_request(self, request_id: str, reason: FinishReason, now: float) -> Request | None:
        """End a request for a reason found outside the scheduler (a stop string)."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, reason, now)
        return request

    def update(
        self, output: SchedulerOutput, sampled: Mapping[str, int], now: float
    ) -> list[Request]:
        """Record a finished step: computed tokens, sampled tokens, stops. Returns the requests
        that finished in this step (including any the step's decision rejected)."""
        finished = self._finished_in_schedule
        self._finished_in_schedule = []
        prefill_only = self.config.role == "prefill"
        for chunk in output.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.num_computed_tokens != chunk.start_pos:
                continue  # aborted or preempted while the step ran
            request.num_computed_tokens += len(chunk.token_ids)
            if not chunk.sample:
                continue
            request.append_token(sampled[chunk.request_id], now)
            reason = request.check_stop()
            if reason is None and prefill_only:
                reason = FinishReason.PREFILLED
                # Its KV stays for the decode peer to pull, under a lease.
                self.leases.grant(request.request_id, request.num_computed_tokens, now)
            if reason is not None:
                self._finish(request, reason, now)
                finished.append(request)
        return finished

    # -- state ------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- helpers for policies ---------------------------------------------------------------

    def _chunk(self, request: Request, num_tokens: int) -> ScheduledChunk:
        """Allocate blocks for `num_tokens` more of `request` (caller checked they fit) and
        describe the chunk."""
        start = request.num_computed_tokens
        end = start + num_tokens
        table = self.kv.allocate(request.request_id, end)
        return ScheduledChunk(
            request_id=request.request_id,
            token_ids=request.token_ids[start:end],
            start_pos=start,
            block_ids=table,
            sample=end == request.num_tokens,
            sampling_params=request.sampling_params,
            num_output_tokens=request.num_output_tokens,
            context_token_ids=request.token_ids,
        )

    def _decode_chunks(self, requests: list[Request]) -> list[ScheduledChunk]:
        """`_chunk(request, 1)` for each decode, on the hot path (one loop, locals only): a
        running request's table holds exactly its computed tokens, so it needs a new block only
        when the new token starts one."""
        kv = self.kv
        block_size = kv.block_size
        allocate, table_of = kv.allocate, kv.block_table
        chunks = []
        for request in requests:
            pos = request.num_computed_tokens
            rid = request.request_id
            tokens = request.token_ids
            chunks.append(
                ScheduledChunk(
                    rid,
                    tokens[-1:],
                    pos,
                    allocate(rid, pos + 1) if pos % block_size == 0 else table_of(rid),
                    True,
                    request.sampling_params,
                    len(tokens) - len(request.prompt_token_ids),
                    tokens,
                )
            )
        return chunks

    def _blocks_needed(self, request: Request, num_tokens: int) -> int:
        return self.kv.num_blocks_needed(
            request.request_id, request.num_computed_tokens + num_tokens
        )

    def _wait(self, request: Request, front: bool = False) -> None:
        """Queue `request`, at the back (or the front: a preempted request goes first)."""
        if front:
            self.waiting.insert(0, request)
        else:
            self.waiting.append(request)
        self.waiting_index.added(request, front)

    def _unwait(self, request: Request) -> None:
        self.waiting.remove(request)
        self.waiting_index.removed(request)

    def _admit(self, request: Request) -> None:
        """Move a waiting request to running (its blocks are allocated by `_chunk`)."""
        self._unwait(request)
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _preempt(self, request: Request, output: SchedulerOutput) -> None:
        """Free a running request's KV; it recomputes later from its tokens so far."""
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._wait(request, front=True)
        output.preempted_ids.append(request.request_id)

    def _reject(self, request: Request, output: SchedulerOutput, now: float) -> None:
        self._finish(request, FinishReason.REJECTED, now)
        self.num_rejections += 1
        self._finished_in_schedule.append(request)
        output.rejected_ids.append(request.request_id)

    def _finish(self, request: Request, reason: FinishReason, now: float) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self._unwait(request)
        elif request.status is RequestStatus.RECEIVING:
            del self.receiving[request.request_id]
        self.kv.free(request.request_id)
        del self.requests[request.request_id]
        request.finish(reason, now)
