"""Azure LLM inference traces (`TIMESTAMP,ContextTokens,GeneratedTokens`) as arrivals and lengths.

Timestamps look like `2023-11-16 18:15:46.6805900`: seven fractional digits, more than
`datetime.fromisoformat` takes before Python 3.11, so they are parsed by hand; a `T` separator and
a `Z` or `+hh:mm` suffix are accepted too. Any malformed row raises ValueError naming the file and
line, because a silently skipped row would change the offered load.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperflexis.workloads._checks import check_int, check_positive
from hyperflexis.workloads.spec import mean_rate_rps

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(Z|[+-]\d{2}:?\d{2})?"
)
_INTEGER = re.compile(r"-?[0-9]+")
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True, eq=False)
class Trace:
    """A trace's requests in arrival order."""

    source: str  # where it came from, for messages
    arrivals_s: np.ndarray  # float64 seconds from the earliest row; non-decreasing, first is 0
    prompt_lens: np.ndarray  # int64 ContextTokens, 0 read as 1 (a prompt has a token)
    output_lens: np.ndarray  # int64 GeneratedTokens, 0 read as 1 (a request makes a token)

    @property
    def num_requests(self) -> int:
        return len(self.arrivals_s)

    @property
    def mean_rate_rps(self) -> float | None:
        return mean_rate_rps(self.arrivals_s)


def read_azure_trace(path: str | Path, max_requests: int | None = None) -> Trace:
    """The first `max_requests` rows of an Azure trace CSV (all when None).

    Rows are stably sorted by time, so a trace with out-of-order rows still gives non-negative
    offsets; Azure's published traces are already in order.
    """
    if max_requests is not None:
        check_int(max_requests, "max_requests", minimum=0)
    path = Path(path)
    whole_s: list[int] = []
    frac_s: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = _column_indices(header, path)
            for row in reader:
                if max_requests is not None and len(prompts) >= max_requests:
                    break
                if not row or all(not cell.strip() for cell in row):
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) <= max(columns):
                    raise ValueError(f"{where}: expected {len(COLUMNS)} fields, got {len(row)}")
                seconds, fraction = _parse_timestamp(row[columns[0]], where)
                whole_s.append(seconds)
                frac_s.append(fraction)
                prompts.append(max(_parse_count(row[columns[1]], COLUMNS[1], where), 1))
                outputs.append(max(_parse_count(row[columns[2]], COLUMNS[2], where), 1))
    except OSError as exc:
        raise ValueError(f"cannot read trace {path}: {exc}") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed CSV: {exc}") from exc
    whole = np.asarray(whole_s, dtype=np.int64)
    # Whole and fractional seconds apart: epoch seconds as one float64 keep only ~0.2 µs.
    times = (whole - (whole.min() if len(whole) else 0)).astype(np.float64) + np.asarray(frac_s)
    order = np.argsort(times, kind="stable")
    times = times[order]
    return Trace(
        source=str(path),
        arrivals_s=times - (times[0] if len(times) else 0.0),
        prompt_lens=np.asarray(prompts, dtype=np.int64)[order],
        output_lens=np.asarray(outputs, dtype=np.int64)[order],
    )


def scale_to_rate(arrivals_s: np.ndarray, target_rate_rps: float) -> np.ndarray:
    """Arrivals compressed or stretched in time so that their mean rate (`mean_rate_rps`) is
    `target_rate_rps`; offsets are taken from the first arrival. An infinite target sends
    everything at 0. Fewer than two arrivals have no rate and come back as offsets unchanged."""
    check_positive(target_rate_rps, "target_rate_rps", allow_inf=True)
    arrivals = np.asarray(arrivals_s, dtype=np.float64)
    if len(arrivals) == 0:
        return arrivals.copy()
    offsets = arrivals - arrivals.min()
    if math.isinf(target_rate_rps):
        return np.zeros_like(offsets)
    if len(arrivals) < 2:
        return offsets
    rate = mean_rate_rps(arrivals)
    if rate is None:
        raise ValueError("cannot scale arrivals to a rate: they all arrive at the same time")
    return offsets * (rate / target_rate_rps)


def _column_indices(header: list[str] | None, path: Path) -> tuple[int, int, int]:
    names = [cell.strip().lstrip("\ufeff") for cell in header or []]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise ValueError(
            f"{path}:1: expected a header with columns {', '.join(COLUMNS)}; "
            f"missing {', '.join(missing)}"
        )
    first, second, third = (names.index(column) for column in COLUMNS)
    return first, second, third


def _parse_timestamp(text: str, where: str) -> tuple[int, float]:
    """Seconds since the epoch (UTC when the stamp has no zone), as whole and fraction."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{where}: invalid TIMESTAMP {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        moment = dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ValueError(f"{where}: invalid TIMESTAMP {text!r}: {exc}") from None
    delta = moment - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    zone = match.group(8)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    return seconds, fraction


def _parse_count(text: str, column: str, where: str) -> int:
    # Not int() alone: it takes "1_000" and " +5", which no trace writer means.
    if _INTEGER.fullmatch(text.strip()) is None:
        raise ValueError(f"{where}: invalid {column} {text!r}: expected an integer")
    value = int(text)
    if value < 0:
        raise ValueError(f"{where}: invalid {column} {value}: expected >= 0")
    return value
