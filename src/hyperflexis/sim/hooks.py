"""The fixed simulator's seam (DESIGN.md §1, §6): what `ClusterSimulator` tells a driver that
changes the cluster while it runs, such as the elastic simulator.

The simulator calls these four methods at fixed points of its event loop; the driver answers by
calling the simulator's public methods (`schedule`, `on`, `add_instance`, `replace_instance`,
`join`, `leave`, `drain`, `snapshot`). The P/D hand-off itself is the controller's
(`cluster.controller`), parked hand-offs included. The base class here is the fixed cluster:
every call is a no-op.
"""

from __future__ import annotations

from hyperflexis.bench.metrics import RequestRecord
from hyperflexis.cluster.dispatcher import DispatchRequest


class ClusterHooks:
    """Called by `ClusterSimulator`; override what the driver needs."""

    def request_arrived(self, request: DispatchRequest, now: float) -> None:
        """A request reached the cluster, before the dispatcher routes it."""

    def request_ended(self, record: RequestRecord) -> None:
        """A request has its record: completed, rejected, failed, or aborted at the end."""

    def handed_off(self, request_id: str, prefill_id: str, decode_id: str, now: float) -> None:
        """P/D: a prefilled request's KV left `prefill_id` for `decode_id`."""

    def instance_changed(self, index: int, now: float) -> None:
        """The instance at `index` started or ended a step (or found nothing to run), or
        received a request's KV: it may have just become idle."""
