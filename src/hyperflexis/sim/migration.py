"""The simulator's side of a drain's migration (DESIGN.md §10.3): it executes the cluster
controller's `MoveOut`, `Migrate`, `Release`, `Abort` and `Redispatch` (`cluster.migration`
decides) on the simulated instances, as the server's `HandoffDriver` does on real ones.

- `MoveOut`: the draining instance stops the request between two steps (a fast-forward window is
  cut after its step in flight; a regular step ends first), its computed tokens' KV leased; the
  controller hears `MovedOut`.
- `Migrate`: the target continues the same request object with its tokens so far. With KV it
  takes the modelled KV transfer time for the leased tokens (the P/D hand-off's
  `KVTransferModel`), arriving as a `TransferDone`; the controller's `Release` then frees the
  lease on the source (which may have drained by then). Without KV it recomputes its prompt and
  output on the target, at once.
- `Abort` + `Redispatch`: a request that streamed nothing by the deadline starts again elsewhere,
  as a new request with its arrival time (its waiting so far counts against its TTFT).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from hyperflexis.cluster.controller import Controller
from hyperflexis.cluster.controller_events import (
    Abort,
    Effect,
    Migrate,
    MovedOut,
    MoveOut,
    Redispatch,
    Release,
)
from hyperflexis.core.request import Request, RequestStatus
from hyperflexis.sim.deployment import KVTransferModel
from hyperflexis.sim.events import FastForwardEnd, QueuedEvent, TransferDone
from hyperflexis.sim.instance import SimInstance


class Cluster(Protocol):
    """What migration uses of `ClusterSimulator`."""

    instances: list[SimInstance]
    controller: Controller
    kv_transfer: KVTransferModel | None

    @property
    def routes(self) -> Mapping[str, list[str]]: ...

    def index_of(self, instance_id: str | None) -> int | None: ...

    def schedule(self, time_s: float, event: QueuedEvent) -> None: ...

    def execute(self, effects: list[Effect], now: float) -> None: ...

    def add_request(self, index: int, request: Request, now: float) -> None: ...

    def wake(self, index: int, now: float) -> None: ...


class SimMigrations:
    """Requests on their way off draining instances; `execute` takes the effects it knows."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.pending: dict[int, list[str]] = {}  # instance index -> request ids to move out
        self._moved: dict[str, Request] = {}  # stopped on their source, for `Migrate`
        self._aborted: dict[str, Request] = {}  # aborted on their source, for `Redispatch`
        self.num_moved = 0  # requests that continued on another instance, with KV or not

    def execute(self, effect: Effect, now: float) -> bool:
        """Carry out `effect` if it is one of migration's; False if not."""
        if isinstance(effect, MoveOut):
            self._move_out(effect, now)
        elif isinstance(effect, Migrate):
            self._migrate(effect, now)
        elif isinstance(effect, Release):
            # P/D's leases are freed at the prefill's end already; a migration's is held.
            index = self._index(effect.prefill_id)
            if self.cluster.instances[index].release_lease(effect.request_id):
                self.cluster.wake(index, now)  # it may have drained now
        elif isinstance(effect, Abort):
            inst = self.cluster.instances[self._index(effect.instance_id)]
            request = inst.abort(effect.request_id, now)
            if request is not None:
                self._aborted[effect.request_id] = request
        elif isinstance(effect, Redispatch):
            self._redispatch(effect, now)
        else:
            return False
        return True

    def between_steps(self, index: int, now: float) -> None:
        """The instance at `index` is between two steps: stop the requests asked to move."""
        if index not in self.pending or self.cluster.instances[index].busy:
            return
        inst = self.cluster.instances[index]
        for request_id in self.pending.pop(index):
            out = inst.migrate_out(request_id, now)
            if out is None:
                moved = MovedOut(request_id, inst.instance_id, moved=False)
            else:
                request, num_kv_tokens = out
                self._moved[request_id] = request
                moved = MovedOut(request_id, inst.instance_id, True, num_kv_tokens)
            self.cluster.execute(self.cluster.controller.handle(now, moved), now)

    def _move_out(self, effect: MoveOut, now: float) -> None:
        index = self._index(effect.instance_id)
        self.pending.setdefault(index, []).append(effect.request_id)
        inst = self.cluster.instances[index]
        if not inst.busy:
            self.between_steps(index, now)
            return
        end_s = inst.cut_window(now)  # a regular step ends by itself; then its StepStart
        if end_s is not None:
            self.cluster.schedule(end_s, FastForwardEnd(index, inst.generation))

    def _migrate(self, effect: Migrate, now: float) -> None:
        request = self._moved.pop(effect.request_id)
        index = self._index(effect.to_id)
        cluster = self.cluster
        cluster.routes[request.request_id].append(effect.to_id)
        request.status, request.finish_reason, request.finish_s = RequestStatus.WAITING, None, None
        self.num_moved += 1
        if not effect.with_kv:
            request.num_computed_tokens = 0  # the target recomputes the prompt and the output
            cluster.add_request(index, request, now)
            return
        if cluster.kv_transfer is None:
            raise RuntimeError("a migration with KV needs the simulator's kv_transfer model")
        cluster.instances[index].num_incoming += 1
        arrive_s = now + cluster.kv_transfer.seconds(request.num_computed_tokens)
        cluster.schedule(arrive_s, TransferDone(index, request))

    def _redispatch(self, effect: Redispatch, now: float) -> None:
        old = self._aborted.pop(effect.request_id)
        if effect.instance_id is None:
            # Only an instance's death sends a request nowhere; the simulator kills none.
            raise RuntimeError(f"the simulator cannot carry out {effect!r}")
        request = Request(
            old.request_id, old.prompt_token_ids, old.sampling_params, old.slo,
            arrival_s=old.arrival_s,
        )  # fmt: skip
        self.cluster.routes[request.request_id].append(effect.instance_id)
        self.cluster.add_request(self._index(effect.instance_id), request, now)

    def _index(self, instance_id: str) -> int:
        index = self.cluster.index_of(instance_id)
        assert index is not None  # the controller knows only the simulator's instances
        return index
