"""Baseline dispatchers, so experiments compare like with like: `round-robin`, `least-loaded`
(the vLLM router / Dynamo style) and `distserve` (round-robin prefill, static P/D pairing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hyperflexis.cluster.dispatcher import DispatchDecision, Dispatcher, DispatchRequest
from hyperflexis.cluster.inflight import InFlight, InFlightRequest
from hyperflexis.cluster.registry import register_dispatcher
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.scheduler.kv_blocks import num_blocks_for

NEW_REQUEST_ROLES = ("mixed", "prefill")  # roles that take new requests


def new_request_candidates(snapshots: Sequence[LoadSnapshot]) -> list[LoadSnapshot]:
    """Instances that may take a new request: not draining, role `mixed` or `prefill`."""
    return [s for s in snapshots if not s.draining and s.role in NEW_REQUEST_ROLES]


def in_flight_record(
    request: DispatchRequest, arrive_s: float, deadline_s: float
) -> InFlightRequest:
    slo = request.slo
    return InFlightRequest(
        arrive_s, deadline_s, slo.priority, request.num_prompt_tokens, slo.tpot_s
    )


class _Cycle:
    """Deterministic round-robin over a changing set of ids: the next id after the last one
    chosen, in sorted order, so instances joining or leaving never reset the rotation."""

    __slots__ = ("_last_id",)

    def __init__(self) -> None:
        self._last_id: str | None = None

    def next(self, ids: list[str]) -> str:
        ordered = sorted(ids)
        last = self._last_id
        chosen = next((i for i in ordered if last is None or i > last), ordered[0])
        self._last_id = chosen
        return chosen


@register_dispatcher
class RoundRobinDispatcher(Dispatcher):
    """Cycles over the instances that take new requests, ignoring load."""

    name = "round-robin"

    def __init__(
        self,
        cost_model: StepCostModel,
        scheduler_config: SchedulerConfig,
        admission_control: bool = False,
    ) -> None:
        super().__init__(cost_model, scheduler_config, admission_control)
        self._cycle = _Cycle()

    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        candidates = new_request_candidates(snapshots)
        if not candidates:
            return DispatchDecision(None, "no-instance")
        return DispatchDecision(self._cycle.next([s.instance_id for s in candidates]), "next")


@register_dispatcher
class LeastLoadedDispatcher(Dispatcher):
    """Fewest requests (waiting + running, plus those sent since its snapshot); ties go to the
    most free KV, then the smallest id."""

    name = "least-loaded"

    def __init__(
        self,
        cost_model: StepCostModel,
        scheduler_config: SchedulerConfig,
        admission_control: bool = False,
    ) -> None:
        super().__init__(cost_model, scheduler_config, admission_control)
        self._in_flight = InFlight()

    def choose(
        self, request: DispatchRequest, snapshots: Sequence[LoadSnapshot], now: float
    ) -> DispatchDecision:
        candidates = new_request_candidates(snapshots)
        if not candidates:
            return DispatchDecision(None, "no-instance")

        def load(s: LoadSnapshot) -> tuple[int, int, str]:
            in_flight = self._in_flight.since(s)[0]
            blocks = sum(num_blocks_for(r.num_prompt_tokens, s.block_size) for r in in_flight)
            num_requests = s.num_waiting + s.num_running + len(in_flight)
            return num_requests, -(s.num_free_blocks - blocks), s.instance_id

        best = min(candidates, key=load)
        deadline_s = request.arrival_s + request.slo.ttft_s
        self._in_flight.add(best, in_flight_record(request, now, deadline_s))
        return DispatchDecision(best.instance_id, "least-loaded")


@register_dispatcher
class DistServeDispatcher(RoundRobinDispatcher):
    """DistServe-style: new requests round-robin over the prefill (or mixed) instances; a
    finished prefill goes to its statically paired decode instance (`LinkTable` policy `pairs`
    builds the pairing), ignoring load."""

    name = "distserve"

    def choose_decode(
        self,
        request: DispatchRequest,
        prefill_instance_id: str,
        snapshots: Sequence[LoadSnapshot],
        links: Mapping[str, frozenset[str]],
        now: float,
    ) -> DispatchDecision:
        # Prefill i (in id order) takes the (i mod n)-th of its n linked decode instances: one
        # fixed partner under `pairs`, i -> i mod D under `all`. A partner that cannot take it
        # passes it to the next one along.
        linked = sorted(links.get(prefill_instance_id, frozenset()))
        available = {s.instance_id for s in snapshots if s.role == "decode" and not s.draining}
        # The links name every prefill instance; the snapshots may hold decode instances only.
        prefill_ids = sorted(links)
        rank = prefill_ids.index(prefill_instance_id) if prefill_instance_id in links else 0
        for step in range(len(linked)):
            decode_id = linked[(rank + step) % len(linked)]
            if decode_id in available:
                return DispatchDecision(decode_id, "paired" if step == 0 else "next-paired")
        return DispatchDecision(None, "no-linked-decode-instance")
