"""Builders and a tiny manual-clock driver for scaler tests: instances and snapshots, a
deterministic arrival feeder, and a cluster that applies decisions with fixed start-up and drain
times."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.cluster.scaler import (
    ClusterView,
    InstanceView,
    PoolLimits,
    Scaler,
    ScalerContext,
    ScalingDecision,
    make_scaler,
)
from hyperflexis.cluster.snapshot import LoadSnapshot, PendingPrefill
from hyperflexis.core.slo import SLO
from hyperflexis.perf import StepFeatures, make_cost_model
from hyperflexis.scheduler.config import Role

MODEL = "llama-3.1-8b"
STANDARD = SLO(ttft_s=2.0, tpot_s=0.1, priority=1, class_name="standard")
INTERACTIVE = SLO(ttft_s=0.5, tpot_s=0.04, priority=0, class_name="interactive")


def context() -> ScalerContext:
    cost = make_cost_model("analytic", hardware="h100", model=MODEL)
    return ScalerContext.of("h100", MODEL, cost)


def scaler(name: str = "hyperflexis", config: object = None) -> Scaler:
    return make_scaler(name, context(), config)


def snapshot(
    instance_id: str,
    role: Role,
    now: float = 0.0,
    *,
    num_waiting: int = 0,
    num_running: int = 0,
    kv_usage: float = 0.0,
    pending: tuple[PendingPrefill, ...] = (),
) -> LoadSnapshot:
    num_blocks = 1000
    return LoadSnapshot(
        instance_id=instance_id,
        role=role,
        time_s=now,
        num_blocks=num_blocks,
        num_free_blocks=round(num_blocks * (1 - kv_usage)),
        block_size=16,
        num_running=num_running,
        num_waiting=num_waiting,
        decode_features=StepFeatures(),
        tightest_tpot_s=math.inf,
        earliest_decode_deadline_s=math.inf,
        pending_prefills=pending,
    )


def view(instances: list[InstanceView], **pools: tuple[int, int]) -> ClusterView:
    """`pools` as role=(min, max)."""
    limits = {role: PoolLimits(lo, hi) for role, (lo, hi) in pools.items()}
    return ClusterView(tuple(instances), limits)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Finished:
    """A finished request as `observe_finish` reads it."""

    slo_class: str
    num_output_tokens: int
    attained: bool = True


@dataclass
class Traffic:
    """Deterministic arrivals: the next request comes 1/rate(t) after the previous one."""

    scaler: Scaler
    time_s: float = 0.0  # the next arrival
    num_sent: int = 0

    def run(
        self,
        until_s: float,
        rate: Callable[[float], float],
        shape: Callable[[float], tuple[int, int, SLO]],
    ) -> None:
        """Send requests until `until_s`; `shape(t)` is (prompt tokens, max_tokens, SLO). Each
        is reported finished and attained at once, so observed attainment stays 1.0."""
        while self.time_s < until_s:
            t = self.time_s
            prompt, max_tokens, slo = shape(t)
            self.num_sent += 1
            request = DispatchRequest(f"r{self.num_sent}", prompt, max_tokens, slo, t)
            self.scaler.observe_arrival(t, request)
            self.scaler.observe_finish(t, Finished(slo.class_name, max_tokens))
            r = rate(t)
            self.time_s = t + (1.0 / r if r > 0 else until_s - t + 1e-9)


@dataclass
class MiniCluster:
    """Applies decisions: new instances start for `startup_s` (None: their predicted start-up
    time), draining ones take `drain_s` and then stop or flip."""

    instances: dict[str, InstanceView]
    pools: dict[str, tuple[int, int]]
    drain_s: float = 5.0
    startup_s: float | None = None
    ready_at: dict[str, float] = field(default_factory=dict)
    log: list[ScalingDecision] = field(default_factory=list)

    @classmethod
    def of(cls, roles: dict[str, int], **pools: tuple[int, int]) -> MiniCluster:
        instances = {}
        for role, count in roles.items():
            for k in range(count):
                instance_id = f"{role}-{k}"
                instances[instance_id] = InstanceView(instance_id, role, "active", MODEL)  # type: ignore[arg-type]
        return cls(instances, dict(pools))

    def view(self) -> ClusterView:
        return view(list(self.instances.values()), **self.pools)

    def count(self, role: str) -> int:
        return sum(1 for i in self.instances.values() if i.role == role)

    def step(self, now: float, scaler: Scaler) -> list[ScalingDecision]:
        """Advance transitions to `now`, then ask the scaler and apply its answer."""
        for instance_id, ready_s in list(self.ready_at.items()):
            if ready_s > now:
                continue
            del self.ready_at[instance_id]
            instance = self.instances[instance_id]
            if instance.state == "starting":
                self.instances[instance_id] = replace(instance, state="active")
            elif instance.drain_target == "stop":
                del self.instances[instance_id]
            else:
                new_role = "decode" if instance.role == "prefill" else "prefill"
                self.instances[instance_id] = replace(
                    instance, role=new_role, state="active", drain_target=None
                )
        decisions = scaler.decide(now, self.view())
        for d in decisions:
            self.log.append(d)
            if d.kind == "scale_out":
                assert d.startup_s is not None
                self.instances[d.instance_id] = InstanceView(
                    d.instance_id, d.role, "starting", MODEL
                )
                self.ready_at[d.instance_id] = now + (self.startup_s or d.startup_s)
            else:
                target = "stop" if d.kind == "scale_in" else "flip"
                instance = self.instances[d.instance_id]
                assert instance.state == "active", d
                self.instances[d.instance_id] = replace(
                    instance, state="draining", drain_target=target
                )
                self.ready_at[d.instance_id] = now + self.drain_s
        return decisions
