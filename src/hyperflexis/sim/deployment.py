"""What a simulated cluster is made of: its instances and roles, P/D links, and the KV transfer
between a prefill and a decode instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hyperflexis.perf.specs import HardwareSpec, ModelSpec
from hyperflexis.scheduler.config import Role

Links = Mapping[str, frozenset[str]]  # P/D: prefill id -> the decode ids it may hand off to


@dataclass(frozen=True, slots=True)
class Deployment:
    """Either `num_mixed` collocated instances, or `num_prefill` + `num_decode` disaggregated
    ones. Instance ids are `mixed-0..`, `prefill-0..`, `decode-0..`."""

    num_mixed: int = 0  # collocated (prefill + decode) instances
    num_prefill: int = 0  # P/D: prefill-only instances
    num_decode: int = 0  # P/D: decode-only instances
    # P/D: prefill id -> the decode ids it can send KV to; None links every pair.
    links: Links | None = None

    def __post_init__(self) -> None:
        for name in ("num_mixed", "num_prefill", "num_decode"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"invalid deployment field {name!r}: expected an int >= 0")
        if self.num_mixed and (self.num_prefill or self.num_decode):
            raise ValueError(
                "invalid deployment: give either mixed instances or prefill + decode instances"
            )
        if not self.num_mixed and (self.num_prefill < 1 or self.num_decode < 1):
            raise ValueError(
                "invalid deployment: P/D needs at least one prefill and one decode instance "
                f"(got {self.num_prefill} prefill, {self.num_decode} decode)"
            )
        if self.links is not None:
            if not self.is_disaggregated:
                raise ValueError("invalid deployment field 'links': only for P/D deployments")
            prefill = {i for i, role in self.instances() if role == "prefill"}
            decode = {i for i, role in self.instances() if role == "decode"}
            for source, targets in self.links.items():
                if source not in prefill or not set(targets) <= decode:
                    raise ValueError(
                        f"invalid deployment field 'links': {source!r} -> {sorted(targets)} "
                        "must link a prefill instance to decode instances"
                    )

    @classmethod
    def collocated(cls, num_instances: int) -> Deployment:
        return cls(num_mixed=num_instances)

    @classmethod
    def disaggregated(
        cls,
        num_prefill: int,
        num_decode: int,
        links: Links | None = None,
    ) -> Deployment:
        return cls(num_prefill=num_prefill, num_decode=num_decode, links=links)

    @property
    def is_disaggregated(self) -> bool:
        return self.num_mixed == 0

    @property
    def num_instances(self) -> int:
        return self.num_mixed + self.num_prefill + self.num_decode

    def instances(self) -> list[tuple[str, Role]]:
        """(instance id, role) of every instance, in a fixed order."""
        roles: list[tuple[Role, int]] = [
            ("mixed", self.num_mixed),
            ("prefill", self.num_prefill),
            ("decode", self.num_decode),
        ]
        return [(f"{role}-{i}", role) for role, count in roles for i in range(count)]

    def link_table(self) -> dict[str, frozenset[str]]:
        """prefill id -> linked decode ids (every pair when `links` is None)."""
        if self.links is not None:
            return {source: frozenset(targets) for source, targets in self.links.items()}
        decode = frozenset(i for i, role in self.instances() if role == "decode")
        return {i: decode for i, role in self.instances() if role == "prefill"}


@dataclass(frozen=True, slots=True)
class KVTransferModel:
    """Time to move a prompt's KV from a prefill to a decode instance: bytes over the
    interconnect plus a fixed latency. Each accelerator of a tensor-parallel instance sends its
    own shard over its own link, so the bytes are per accelerator."""

    bytes_per_token: float  # KV bytes of one token on one accelerator
    bandwidth_bytes_s: float  # per-accelerator interconnect bandwidth
    latency_s: float  # per transfer

    def __post_init__(self) -> None:
        for name in ("bytes_per_token", "bandwidth_bytes_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"invalid KV transfer field {name!r}: must be > 0")
        if not self.latency_s >= 0:
            raise ValueError("invalid KV transfer field 'latency_s': must be >= 0")

    @classmethod
    def between(cls, hardware: HardwareSpec, model: ModelSpec) -> KVTransferModel:
        return cls(
            bytes_per_token=model.kv_bytes_per_token_per_gpu,
            bandwidth_bytes_s=hardware.interconnect_bandwidth_bytes_s,
            latency_s=hardware.interconnect_latency_s,
        )

    def seconds(self, num_tokens: int) -> float:
        return num_tokens * self.bytes_per_token / self.bandwidth_bytes_s + self.latency_s
