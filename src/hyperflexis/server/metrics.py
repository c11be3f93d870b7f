"""Server metrics in the Prometheus text format (version 0.0.4), written here to keep the
dependency list short: per-class TTFT/TPOT histograms and attained/missed counters, rejections,
the server's own per-request overhead, and per-instance gauges rendered from the latest snapshots.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hyperflexis.backends.local import InstanceHandle

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.3, 0.5, 1.0)
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)
NUM_RECENT_OVERHEADS = 10_000  # samples kept for exact quantiles in /debug/stats

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Counter:
    name: str
    help: str
    label_names: Labels = ()
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    label_names: Labels = ()
    # Per label set: counts per bucket (not cumulative; the last is +Inf), sum, count.
    series: dict[Labels, tuple[list[int], list[float]]] = field(default_factory=dict)

    def observe(self, value: float, *labels: str) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total[0])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {cumulative}"


def _gauge(name: str, help: str, rows: list[tuple[str, float]]) -> Iterable[str]:
    yield f"# HELP {name} {help}"
    yield f"# TYPE {name} gauge"
    for instance_id, value in rows:
        yield f'{name}{{instance="{_escape(instance_id)}"}} {_number(value)}'


class ServerMetrics:
    """Everything /metrics shows; the server records into it, `render` writes the text."""

    def __init__(self) -> None:
        self.ttft = Histogram(
            "hyperflexis_ttft_seconds",
            "Time to first token from arrival at the server, per SLO class.",
            TTFT_BUCKETS_S,
            ("slo_class",),
        )
        self.tpot = Histogram(
            "hyperflexis_tpot_seconds",
            "Mean time per output token after the first, per finished request and SLO class.",
            TPOT_BUCKETS_S,
            ("slo_class",),
        )
        self.overhead = Histogram(
            "hyperflexis_server_overhead_seconds",
            "Server time per request before it reaches an instance: parsing, tokenisation, "
            "SLO resolution, dispatch.",
            OVERHEAD_BUCKETS_S,
        )
        self.attained = Counter(
            "hyperflexis_requests_attained_total",
            "Requests that completed within their TTFT and TPOT targets.",
            ("slo_class",),
        )
        self.missed = Counter(
            "hyperflexis_requests_missed_total",
            "Requests that did not attain their SLO, by why: slo (late), rejected, aborted, error.",
            ("slo_class", "reason"),
        )
        self.rejected = Counter(
            "hyperflexis_requests_rejected_total",
            "Requests answered 503 by admission control, by where: dispatch, instance, queue.",
            ("slo_class", "reason"),
        )
        self.recent_overheads_s: deque[float] = deque(maxlen=NUM_RECENT_OVERHEADS)

    def observe_overhead(self, seconds: float) -> None:
        self.overhead.observe(seconds)
        self.recent_overheads_s.append(seconds)

    def overhead_quantiles_ms(self) -> dict[str, float | int | None]:
        samples = sorted(self.recent_overheads_s)

        def at(q: float) -> float | None:
            if not samples:
                return None
            return 1000.0 * samples[min(len(samples) - 1, int(q * len(samples)))]

        return {"count": len(samples), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}

    def render(self, instances: Sequence[InstanceHandle], num_queued: int) -> str:
        lines: list[str] = []
        for metric in (self.ttft, self.tpot, self.overhead):
            lines += metric.render()
        for counter in (self.attained, self.missed, self.rejected):
            lines += counter.render()
        lines += _gauge(
            "hyperflexis_server_queued_requests",
            "Requests dispatched that have no first token yet (what --max-queued bounds).",
            [("server", float(num_queued))],
        )
        live = [(h, h.snapshot) for h in instances if h.snapshot is not None]
        lines += _gauge(
            "hyperflexis_instance_up",
            "1 while the instance process serves.",
            [(h.instance_id, 1.0 if h.alive else 0.0) for h in instances],
        )
        lines += _gauge(
            "hyperflexis_instance_waiting_requests",
            "Queue depth: requests waiting for prefill or re-admission.",
            [(h.instance_id, s.num_waiting) for h, s in live],
        )
        lines += _gauge(
            "hyperflexis_instance_running_requests",
            "Requests holding KV blocks.",
            [(h.instance_id, s.num_running) for h, s in live],
        )
        lines += _gauge(
            "hyperflexis_instance_kv_usage",
            "Fraction of KV blocks in use.",
            [(h.instance_id, s.kv_usage) for h, s in live],
        )
        lines += _gauge(
            "hyperflexis_instance_correction_factor",
            "Measured over predicted step time (online latency correction).",
            [(h.instance_id, h.correction_factor) for h in instances],
        )
        lines.append("# HELP hyperflexis_instance_preemptions_total Requests preempted.")
        lines.append("# TYPE hyperflexis_instance_preemptions_total counter")
        lines += [
            f'hyperflexis_instance_preemptions_total{{instance="{_escape(h.instance_id)}"}} '
            f"{h.num_preemptions}"
            for h in instances
        ]
        lines.append(
            "# HELP hyperflexis_instance_rejections_total Late requests the instance rejected."
        )
        lines.append("# TYPE hyperflexis_instance_rejections_total counter")
        lines += [
            f'hyperflexis_instance_rejections_total{{instance="{_escape(h.instance_id)}"}} '
            f"{h.num_rejections}"
            for h in instances
        ]
        return "\n".join(lines) + "\n"
