"""What `hyperflexis simulate` prints and writes, fixed or scaled: the one-line summary, the
sweep table, the results JSON and the progress bar."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def one_line(doc: dict[str, Any]) -> str:
    by_class = ", ".join(f"{k} {v:.3f}" for k, v in doc["attainment_by_class"].items())
    return (
        f"{doc['num_requests']} requests: attainment {doc['attainment']:.3f} ({by_class}), "
        f"per-token {doc['attainment_per_token']:.3f}; goodput {doc['goodput_rps']:.3g} req/s, "
        f"per-token {doc['goodput_per_token_rps']:.3g}; TTFT p90 {_ms(doc['ttft_s']['p90'])}; "
        f"TPOT p90 {_ms(doc['tpot_s']['p90'])}; cost ${doc['cost_usd']:.2f}; "
        f"simulated in {doc['sim_wall_s']:.1f} s"
    )


def sweep_table(runs: list[dict[str, Any]]) -> str:
    """One row per run; attainment and goodput under mean TPOT and under per-token deadlines
    (`/tok`) side by side."""
    header = f"{'policy':<12} {'rate':>7} {'attain':>7} {'att/tok':>7} {'goodput':>8} "
    header += f"{'gp/tok':>8} {'ttft p90':>9} {'tpot p90':>9} {'e2e mean':>9} {'rejected':>8}"
    lines = [header]
    for run in runs:
        lines.append(
            f"{run['policy']:<12} {run['rate']:>7.3g} {run['attainment']:>7.3f} "
            f"{run['attainment_per_token']:>7.3f} {run['goodput_rps']:>8.3g} "
            f"{run['goodput_per_token_rps']:>8.3g} {_ms(run['ttft_s']['p90']):>9} "
            f"{_ms(run['tpot_s']['p90']):>9} {_s(run['e2e_s']['mean']):>9} "
            f"{run['num_rejected']:>8}"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def write_records(out: Path, path: Path, rows: Iterable[dict[str, Any]]) -> str:
    """Write a run's `bench.records` rows to `path`; its name relative to the results `out`."""
    from hyperflexis.bench.records import write_rows

    write_rows(rows, path)
    return str(path.relative_to(out.parent))


@contextmanager
def progress(total: int, unit: str) -> Iterator[Any]:
    """A tqdm bar on stderr (only when it is a terminal); yields its `update`."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty())
    try:
        yield bar.update
    finally:
        bar.close()
