"""The fixed simulator's seam (DESIGN.md §1, §6): what `ClusterSimulator` tells a driver that
changes the cluster while it runs, such as the elastic simulator.

The simulator calls these four methods at fixed points of its event loop; the driver answers by
calling the simulator's public methods (`schedule`, `on`, `add_instance`, `replace_instance`,
`join`, `leave`, `drain`, `snapshot`, `hand_off`). The base class here is the fixed cluster: every
call is a no-op and no hand-off is held.
"""

from __future__ import annotations

from hyperflexis.bench.metrics import RequestRecord
from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.core.request import Request


class ClusterHooks:
    """Called by `ClusterSimulator`; override what the driver needs."""

    def request_arrived(self, request: DispatchRequest, now: float) -> None:
        """A request reached the cluster, before the dispatcher routes it."""

    def request_ended(self, record: RequestRecord) -> None:
        """A request has its record: completed, rejected, failed, or aborted at the end."""

    def prefill_done(self, prefill_index: int, request: Request, now: float) -> bool:
        """P/D: `request` finished its prefill on the instance at `prefill_index`. Return True
        to take its hand-off over (the driver calls `ClusterSimulator.hand_off`, now or
        later); False hands it off at once."""
        return False

    def instance_changed(self, index: int, now: float) -> None:
        """The instance at `index` started or ended a step (or found nothing to run), or
        received a request's KV: it may have just become idle."""
