"""What a live run's instances measured, for a simulated twin of it: their online corrections
and step moments read all through the run (`StepSampler`, `/debug/instances` every period, so
an instance that stops or restarts mid-run still counts), and the measured times of the scaling
transitions in the server's events (`transition_times`)."""

from __future__ import annotations

import contextlib
import statistics
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from hyperflexis.bench.server_info import instance_rows

_COUNT = -1  # `step_fit_moments`' last entry: the number of steps folded in


class StepSampler:
    """The live instances read every `period_s` during a run: the mean of their correction
    factors (what their schedulers planned with, on average: `mean`), the rows read when it
    started (`first`) and each instance's latest row (`rows`). An instance whose step count went
    down restarted: its rows before that are kept under `<id>#<n>`, counted from zero, so
    `bench.fidelity.fit_window(first, rows)` covers every step taken during the run."""

    def __init__(self, url: str, period_s: float = 0.5) -> None:
        self._url, self._period_s = url, period_s
        self._values: list[float] = []
        self._latest: dict[str, dict[str, Any]] = {}
        self._banked: dict[str, dict[str, Any]] = {}
        self.first: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> StepSampler:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            self.first = instance_rows(self._url)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        self._read()  # the state at the end

    def _poll(self) -> None:
        while not self._stop.wait(self._period_s):
            self._read()

    def _read(self) -> None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            self.add_reading(instance_rows(self._url))

    def add_reading(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Fold in one reading of `/debug/instances` (the poller's; a test's own)."""
        alive = [dict(row) for row in rows if row.get("alive")]
        factors = [float(r["correction_factor"]) for r in alive if r.get("correction_factor")]
        with self._lock:
            if factors:
                self._values.append(statistics.fmean(factors))
            for row in alive:
                key = str(row["instance_id"])
                before = self._latest.get(key)
                if before is not None and _count(row) < _count(before):
                    self._banked[f"{key}#{len(self._banked) + 1}"] = before
                self._latest[key] = row

    def mean(self) -> float:
        """The mean of the readings' mean correction factors (1.0 without a reading)."""
        with self._lock:
            return statistics.fmean(self._values) if self._values else 1.0

    def rows(self) -> list[dict[str, Any]]:
        """Each instance's latest row (restarted instances' earlier lives under their own ids)."""
        with self._lock:
            banked = [{**row, "instance_id": key} for key, row in self._banked.items()]
            return [*self._latest.values(), *banked]


def _count(row: Mapping[str, Any]) -> float:
    moments = row.get("step_fit_moments") or [0.0]
    return float(moments[_COUNT])


def transition_times(events: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """From a server's scaling events (`/debug/scaling`, in order): each new instance's time from
    its scale-out to serving (`start_s`), and each role flip's switch from drained to serving in
    the new role (`switch_s`; the drain before it is the requests', which a simulator plays)."""
    started: dict[str, float] = {}
    drained: dict[str, float] = {}
    out: dict[str, list[float]] = {"start_s": [], "switch_s": []}
    for event in events:
        instance, kind, time_s = str(event["instance_id"]), event["event"], float(event["time_s"])
        if kind == "scale_out":
            started[instance] = time_s
        elif kind == "ready" and instance in started:
            out["start_s"].append(round(time_s - started.pop(instance), 3))
        elif kind == "flip":
            drained[instance] = time_s
        elif kind == "flipped" and instance in drained:
            out["switch_s"].append(round(time_s - drained.pop(instance), 3))
    return out
