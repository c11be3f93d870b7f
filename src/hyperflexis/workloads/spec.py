"""A workload: the requests a run offers, each with its arrival time, lengths and SLO class.

The same `Workload` drives the cluster simulator and the live load client, so a seeded workload is
one value both can replay, and `save_workload`/`load_workload` keep it on disk as JSON lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to offer; what the client sends, not what happens to it."""

    request_id: str  # unique within the workload
    arrival_s: float  # when to send it, in seconds from the workload's start (>= 0)
    prompt_len: int  # prompt tokens (>= 1)
    output_len: int  # tokens to generate (>= 1); clients send it as max_tokens with ignore_eos
    slo_class: str  # name of an SLO class in the run's `SLOClasses`

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"invalid RequestSpec field 'request_id': {self.request_id!r}")
        arrival = self.arrival_s
        if isinstance(arrival, bool) or not isinstance(arrival, (int, float)):
            raise ValueError(f"invalid RequestSpec field 'arrival_s': {arrival!r}")
        if not math.isfinite(arrival) or arrival < 0:
            raise ValueError(f"invalid RequestSpec field 'arrival_s': expected >= 0, got {arrival}")
        for name in ("prompt_len", "output_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"invalid RequestSpec field {name!r}: expected an int >= 1, got {value!r}"
                )
        if not isinstance(self.slo_class, str) or not self.slo_class:
            raise ValueError(f"invalid RequestSpec field 'slo_class': {self.slo_class!r}")


# Requests in the order they are sent: by arrival, ties by request_id. Build one with
# `make_workload` so the order and the uniqueness of ids hold.
Workload = tuple[RequestSpec, ...]


def make_workload(specs: Iterable[RequestSpec]) -> Workload:
    """The specs as a `Workload`: sorted by (arrival_s, request_id); duplicate ids raise."""
    ordered = tuple(sorted(specs, key=lambda s: (s.arrival_s, s.request_id)))
    seen: set[str] = set()
    for spec in ordered:
        if spec.request_id in seen:
            raise ValueError(f"invalid workload: duplicate request_id {spec.request_id!r}")
        seen.add(spec.request_id)
    return ordered


def request_ids(num_requests: int, prefix: str = "req-") -> list[str]:
    """`prefix` plus a zero-padded index, so that string order is index order."""
    width = len(str(max(num_requests - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(num_requests)]


def mean_rate_rps(arrivals_s: Sequence[float] | np.ndarray) -> float | None:
    """Requests per second as 1 / mean inter-arrival gap; None with fewer than two requests or
    when they all arrive at once. Arrival processes and trace scaling share this definition."""
    arrivals = np.asarray(arrivals_s, dtype=np.float64)
    if len(arrivals) < 2:
        return None
    span_s = float(arrivals.max() - arrivals.min())
    return (len(arrivals) - 1) / span_s if span_s > 0 else None


def save_workload(workload: Workload, path: str | Path) -> None:
    """Write one JSON object per request, in workload order."""
    lines = [json.dumps(asdict(spec), sort_keys=True) for spec in workload]
    Path(path).write_text("".join(line + "\n" for line in lines))


def load_workload(path: str | Path) -> Workload:
    """Read what `save_workload` wrote; a bad line raises ValueError with its line number."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read workload {path}: {exc}") from exc
    specs = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError("expected a JSON object")
            specs.append(RequestSpec(**fields))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{line_number}: invalid request: {exc}") from None
    try:
        return make_workload(specs)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
