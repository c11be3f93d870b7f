"""Moving KV blocks between instances: transports behind one interface (`base.KVTransport`), in
one registry (`KV_TRANSPORTS`). `shm` is the same-host default, `torch-dist` runs over a
persistent gloo (CPU) or NCCL (CUDA) group per link, `nixl` over UCX when `nixl-cu12` is
installed, `auto` picks shm or torch-dist per link by the two instances' nodes.

Weights for a new instance come from a registry of sources (`weights.WEIGHT_SOURCES`): `peer` (a
running instance's /dev/shm segment), `peer-dist` (that segment over torch.distributed, for a
peer on another node: `weights_dist`) and `disk` (safetensors), through `weights.load_weights`;
`instance_weights.InstanceWeights` picks them for an instance."""

from __future__ import annotations

from hyperflexis.transfer import (
    faulty,
    instance_weights,
    nixl,
    per_link,
    shm,
    torch_dist,
    weights,
    weights_dist,
)
from hyperflexis.transfer.base import (
    KV_TRANSPORTS,
    KVTransport,
    LayoutMismatchError,
    PeerGoneError,
    PoolDescriptor,
    PoolLayout,
    Transfer,
    TransferError,
    TransferTimeoutError,
)

DEFAULT_KV_TRANSPORT = shm.ShmTransport.name

__all__ = [
    "DEFAULT_KV_TRANSPORT",
    "KV_TRANSPORTS",
    "KVTransport",
    "LayoutMismatchError",
    "PeerGoneError",
    "PoolDescriptor",
    "PoolLayout",
    "Transfer",
    "TransferError",
    "TransferTimeoutError",
    "create_kv_transport",
    "faulty",
    "instance_weights",
    "nixl",
    "per_link",
    "shm",
    "torch_dist",
    "weights",
    "weights_dist",
]


def create_kv_transport(name: str = DEFAULT_KV_TRANSPORT) -> KVTransport:
    """A new transport of the registered kind `name` (unknown names list the known ones)."""
    return KV_TRANSPORTS.get(name)()
