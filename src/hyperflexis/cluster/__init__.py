"""The cluster layer: load snapshots, the global dispatcher and its policies (registry), P/D
links. Importing it registers every dispatch policy."""

from hyperflexis.cluster import dispatchers as _dispatchers  # registers the policies
from hyperflexis.cluster.dispatch_hyperflexis import HyperFlexisDispatcher, KVTransferTime
from hyperflexis.cluster.dispatcher import DispatchDecision, Dispatcher, DispatchRequest
from hyperflexis.cluster.inflight import InFlight, InFlightRequest
from hyperflexis.cluster.links import LINK_POLICIES, LinkPolicy, LinkTable
from hyperflexis.cluster.registry import dispatcher_names, make_dispatcher, register_dispatcher
from hyperflexis.cluster.snapshot import LoadSnapshot, PendingPrefill, take_snapshot

del _dispatchers

__all__ = [
    "LINK_POLICIES",
    "DispatchDecision",
    "DispatchRequest",
    "Dispatcher",
    "HyperFlexisDispatcher",
    "InFlight",
    "InFlightRequest",
    "KVTransferTime",
    "LinkPolicy",
    "LinkTable",
    "LoadSnapshot",
    "PendingPrefill",
    "dispatcher_names",
    "make_dispatcher",
    "register_dispatcher",
    "take_snapshot",
]
