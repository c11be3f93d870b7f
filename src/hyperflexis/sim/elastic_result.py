"""What an elastic run produced besides the request records: cost integrated over the instances'
lives, the cluster over time, every transition and scaling decision, and the P/D links as they
changed (so tests can check that every hand-off went over a link that existed at that moment)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperflexis.cluster.lifecycle import Transition
from hyperflexis.cluster.scaler.decision import ScalingDecision
from hyperflexis.scheduler.config import Role
from hyperflexis.sim.deployment import Links
from hyperflexis.sim.result import SimResult


@dataclass(frozen=True, slots=True)
class ClusterSample:
    """The cluster at one control tick."""

    time_s: float
    # Role -> instances holding an accelerator for it: starting ones under the role they will
    # serve, draining ones under the role they are leaving.
    by_role: Mapping[Role, int]
    by_state: Mapping[str, int]  # starting / active / draining -> count


@dataclass(frozen=True, slots=True)
class Handoff:
    """P/D: a prefilled request sent to a decode instance."""

    time_s: float
    request_id: str
    prefill_id: str
    decode_id: str


@dataclass(slots=True)
class ElasticResult:
    """A finished elastic run; `sim.instance_seconds` is the integrated figure."""

    sim: SimResult  # records and counters, as a fixed-size run reports them
    instance_seconds_by_state: dict[str, float]  # starting / active / draining
    cost_usd: float  # instance-seconds at the accelerator's price per hour
    samples: list[ClusterSample]  # one per control tick
    transitions: list[Transition]
    decisions: list[ScalingDecision]  # every decision the scaler returned, in order
    link_log: list[tuple[float, Links]]  # the link table after each change (first: initial)
    handoffs: list[Handoff]
    assignments: list[tuple[float, str, str]]  # (time, request id, instance id) of new requests
    num_parked: int  # hand-offs that waited because no linked decode instance was active
    peak_instances: int  # most instances holding an accelerator at once
    extra: dict[str, Any] = field(default_factory=dict)  # driver notes (e.g. the scaler name)

    @property
    def instance_seconds(self) -> float:
        return self.sim.instance_seconds

    def links_at(self, time_s: float) -> Links:
        """The link table in force at `time_s` (the last change at or before it)."""
        current = self.link_log[0][1]
        for changed_s, links in self.link_log:
            if changed_s > time_s:
                break
            current = links
        return current

    def time_series(self, bin_s: float) -> dict[str, Any]:
        """Per `bin_s` interval: instances by role (mean over the interval's ticks), arrivals,
        prompt and output tokens per second, and the attainment of requests arriving in it."""
        if not bin_s > 0:
            raise ValueError(f"invalid 'bin_s': must be > 0, got {bin_s}")
        num_bins = max(math.ceil(self.sim.duration_s / bin_s), 1)
        arrivals = [0] * num_bins
        attained = [0] * num_bins
        prompt = [0] * num_bins
        output = [0] * num_bins
        for record in self.sim.records:
            b = min(int(record.arrival_s // bin_s), num_bins - 1)
            arrivals[b] += 1
            attained[b] += record.attained
            prompt[b] += record.num_prompt_tokens
            output[b] += record.num_output_tokens
        roles = sorted({role for s in self.samples for role in s.by_role})
        sums = {role: [0.0] * num_bins for role in roles}
        ticks = [0] * num_bins
        for sample in self.samples:
            b = min(int(sample.time_s // bin_s), num_bins - 1)
            ticks[b] += 1
            for role in roles:
                sums[role][b] += sample.by_role.get(role, 0)
        instances: dict[str, list[float | None]] = {
            role: [s / n if n else None for s, n in zip(sums[role], ticks, strict=True)]
            for role in roles
        }
        # The last interval may be cut short by the end of the run.
        widths = [min(bin_s, self.sim.duration_s - b * bin_s) for b in range(num_bins)]
        widths = [w if w > 0 else bin_s for w in widths]
        return {
            "bin_s": bin_s,
            "start_s": [b * bin_s for b in range(num_bins)],
            "instances": instances,
            "arrival_rps": [n / w for n, w in zip(arrivals, widths, strict=True)],
            "prompt_tokens_s": [n / w for n, w in zip(prompt, widths, strict=True)],
            "output_tokens_s": [n / w for n, w in zip(output, widths, strict=True)],
            "attainment": [a / n if n else None for a, n in zip(attained, arrivals, strict=True)],
        }

    def summary(self, bin_s: float = 60.0) -> dict[str, Any]:
        """The run's summary (`SimResult.summary`) plus cost, scaling counts and the time series."""
        summary = self.sim.summary()
        kinds: dict[str, int] = {}
        for decision in self.decisions:
            kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
        summary.update(
            instance_seconds=self.sim.instance_seconds,
            instance_seconds_by_state=dict(sorted(self.instance_seconds_by_state.items())),
            cost_usd=self.cost_usd,
            peak_instances=self.peak_instances,
            num_decisions=dict(sorted(kinds.items())),
            num_parked_handoffs=self.num_parked,
            time_series=self.time_series(bin_s),
            **self.extra,
        )
        return summary
