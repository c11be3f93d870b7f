"""Per-request records on disk: one JSON object per line, the schema `hyperflexis bench --jsonl`
writes and `hyperflexis simulate` writes beside its results, so `hyperflexis report` recomputes
a live run and a simulated one the same way.

Every row holds the `RequestRecord` fields under the live bench's names (`sent_s` is the arrival,
`prompt_tokens` and `output_tokens` the counts, `itls_s` the chunk gaps: null where not kept, as
in the simulator) and the derived `ttft_s`, `tpot_s`, `e2e_s`, `attained` and
`attained_per_token` for readers that do not recompute. The live bench adds the client's fields
(`scheduled_s`, `prompt_len`, `output_len`, `http_status`, `retry_after_s`,
`server_overhead_ms`, `error`); the simulator writes the same keys (null where a simulated
request has no such thing) and `route`, the instances a request went through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hyperflexis.bench.metrics import RequestRecord
from hyperflexis.workloads.spec import RequestSpec

# The row keys a `RequestRecord` is read back from, and the record fields they fill.
_FIELDS = {
    "request_id": "request_id",
    "slo_class": "slo_class",
    "priority": "priority",
    "ttft_slo_s": "ttft_slo_s",
    "tpot_slo_s": "tpot_slo_s",
    "sent_s": "arrival_s",
    "first_token_s": "first_token_s",
    "finish_s": "finish_s",
    "prompt_tokens": "num_prompt_tokens",
    "output_tokens": "num_output_tokens",
    "status": "status",
    "itls_s": "inter_token_latencies_s",
    "instance": "instance",
    "max_itl_s": "max_itl_s",
    "max_token_lateness_s": "max_token_lateness_s",
    "finish_reason": "finish_reason",
}


def record_row(record: RequestRecord) -> dict[str, Any]:
    """The row's record part (every `RequestRecord` field plus the derived figures)."""
    row = {key: getattr(record, name) for key, name in _FIELDS.items()}
    itls = record.inter_token_latencies_s
    row["itls_s"] = None if itls is None else list(itls)
    row.update(
        ttft_s=record.ttft_s,
        tpot_s=record.tpot_s,
        e2e_s=record.e2e_s,
        attained=record.attained,
        attained_per_token=record.attained_per_token,
    )
    return row


def simulated_row(
    record: RequestRecord, spec: RequestSpec, route: Sequence[str] | None
) -> dict[str, Any]:
    """A simulated request's row: the record, the workload's request and its route."""
    row = record_row(record)
    row.update(
        scheduled_s=spec.arrival_s,
        prompt_len=spec.prompt_len,
        output_len=spec.output_len,
        http_status=None,
        retry_after_s=None,
        server_overhead_ms=None,
        error="",
        route=list(route or ()),
    )
    return row


def record_from_row(row: Mapping[str, Any]) -> RequestRecord:
    """The record a row holds; a missing key reads as absent (rows written before a field
    existed), a bad value raises ValueError."""
    for key in ("request_id", "slo_class", "status"):
        if key not in row:
            raise ValueError(f"invalid record row: no {key!r}")
    fields = {name: row[key] for key, name in _FIELDS.items() if key in row}
    try:
        return RequestRecord(**fields)
    except TypeError as exc:
        raise ValueError(f"invalid record row: {exc}") from None


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """One sorted-key JSON object per line (the folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(row, sort_keys=True) for row in rows)
    path.write_text("".join(line + "\n" for line in lines))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a bad line raises ValueError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read records {path}: {exc}") from exc
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_number}: {exc}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object")
        rows.append(row)
    return rows


def records_from_rows(rows: Iterable[Mapping[str, Any]], source: str = "") -> list[RequestRecord]:
    """The records of rows; a bad row raises ValueError naming `source` and its number."""
    records = []
    for number, row in enumerate(rows, start=1):
        try:
            records.append(record_from_row(row))
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: {exc}") from None
    return records
