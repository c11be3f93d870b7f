"""A hand-made P/D relay over real instance processes, for the hand-off tests: it plays the
server's part (AddRequest to P; on KVReady, ResumeRequest to D; on HandoffDone, ReleaseKV to P)
and records what each instance reported."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from hyperflexis.backends.local import InstanceHandle, InstancePool
from hyperflexis.backends.messages import (
    AddRequest,
    HandoffDone,
    Heartbeat,
    KVReady,
    KVSource,
    OutputDelta,
    ReleaseKV,
    ResumeRequest,
    StepReport,
)
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO

SLO_ = SLO(ttft_s=60.0, tpot_s=10.0)
TIMEOUT_S = 60.0


@dataclass
class Relayed:
    """One request's life across P and D, as the relay saw it."""

    deltas: list[OutputDelta] = field(default_factory=list)  # the client's stream, in order
    ready: KVReady | None = None
    handoff: HandoffDone | None = None
    num_p_deltas: int = 0  # of `deltas`, those P sent

    @property
    def token_ids(self) -> list[int]:
        return [t for d in self.deltas for t in d.token_ids]

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def last(self) -> OutputDelta:
        return self.deltas[-1]


class Relay:
    """Reads every instance's reports; keeps each one's latest snapshot."""

    def __init__(self, pool: InstancePool) -> None:
        self.pool = pool
        self.latest: dict[str, StepReport] = {}
        self.expired: dict[str, list[str]] = {}  # by instance
        self.kv_ready: dict[str, KVReady] = {}  # by request
        self.deltas: dict[str, list[OutputDelta]] = {}  # by request, from every instance

    def handle(self, instance_id: str) -> InstanceHandle:
        return self.pool.get(instance_id)

    def reports(self, timeout_s: float = TIMEOUT_S) -> list[StepReport]:
        """The reports that arrived within `timeout_s` (at least one, or AssertionError)."""
        conns = {h.reports: h for h in self.pool.handles.values()}
        ready = wait(list(conns), timeout=timeout_s)
        assert ready, f"no report within {timeout_s} s"
        out = []
        for conn in ready:
            assert isinstance(conn, Connection)
            while conn.poll():
                report = conn.recv()
                if isinstance(report, Heartbeat):
                    continue  # the instance's liveness beat, not a step
                assert isinstance(report, StepReport), report
                self.latest[report.instance_id] = report
                self.expired.setdefault(report.instance_id, []).extend(report.leases_expired)
                self.kv_ready.update((r.request_id, r) for r in report.kv_ready)
                for delta in report.deltas:
                    self.deltas.setdefault(delta.request_id, []).append(delta)
                out.append(report)
        return out

    def run(
        self,
        request_id: str,
        prompt: list[int],
        params: SamplingParams,
        prefill: str = "p",
        decode: str = "d",
        release: bool = True,
    ) -> Relayed:
        """One request through P then D; returns when D (or P, if the first token ended it)
        finishes it."""
        p, d = self.handle(prefill), self.handle(decode)
        arrival_s = time.monotonic()
        p.send(AddRequest(request_id, prompt, params, SLO_, arrival_s))
        relayed = Relayed()
        deadline = time.monotonic() + TIMEOUT_S
        while not (relayed.deltas and relayed.last.finished):
            assert time.monotonic() < deadline, f"{request_id} did not finish"
            for report in self.reports():
                mine = [x for x in report.deltas if x.request_id == request_id]
                relayed.deltas += mine
                if report.instance_id == prefill:
                    relayed.num_p_deltas += len(mine)
                    for ready in report.kv_ready:
                        if ready.request_id == request_id:
                            relayed.ready = ready
                            d.send(self.resume(prefill, prompt, params, relayed, arrival_s))
                for done in report.handoffs:
                    if done.request_id == request_id:
                        relayed.handoff = done
                        if release:
                            p.send(ReleaseKV(request_id))
        return relayed

    def resume(
        self,
        prefill: str,
        prompt: list[int],
        params: SamplingParams,
        relayed: Relayed,
        arrival_s: float,
    ) -> ResumeRequest:
        """What the server sends D once P reported `relayed.ready`."""
        ready = relayed.ready
        p = self.handle(prefill)
        assert ready is not None and p.ready is not None and p.ready.kv_pool is not None
        source = KVSource(p.instance_id, p.ready.kv_pool, ready.block_ids, ready.num_tokens)
        return ResumeRequest(
            ready.request_id,
            prompt,
            relayed.token_ids,
            params,
            SLO_,
            age_s=time.monotonic() - arrival_s,
            ttft_s=ready.ttft_s,
            num_text_chars_sent=len(relayed.text),
            kv=source,
            queue_s=ready.queue_s,
        )

    def wait_until(self, what: str, check: object, timeout_s: float = TIMEOUT_S) -> None:
        """Read reports until `check()` holds (a callable), or fail naming `what`."""
        assert callable(check)
        deadline = time.monotonic() + timeout_s
        while not check():
            left = deadline - time.monotonic()
            assert left > 0, f"not within {timeout_s} s: {what}"
            self.reports(left)

    def all_free(self, instance_id: str) -> bool:
        report = self.latest.get(instance_id)
        if report is None:
            return False
        snapshot = report.snapshot
        return snapshot.num_free_blocks == snapshot.num_blocks
