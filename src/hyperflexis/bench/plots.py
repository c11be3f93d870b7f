"""A one-figure picture of a benchmark run: per-class TTFT and TPOT CDFs with each class's
target, and attainment per class. matplotlib's Agg backend, so it works without a display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hyperflexis.bench.metrics import RequestRecord

if TYPE_CHECKING:
    from types import ModuleType

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (no display here), imported on use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str | Path, title: str = "") -> None:
    """Title (if any), lay out, write the PNG (creating its folder) and free the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_run(records: Sequence[RequestRecord], path: str | Path, title: str = "") -> None:
    """Write a PNG with three panels: TTFT CDF, TPOT CDF (dashed lines: targets), attainment."""
    plt = pyplot()

    names = sorted({r.slo_class for r in records})
    fig, (ax_ttft, ax_tpot, ax_att) = plt.subplots(1, 3, figsize=(14, 4))
    for i, name in enumerate(names):
        color = f"C{i}"
        mine = [r for r in records if r.slo_class == name]
        done = [r for r in mine if r.status == "completed"]
        _cdf(ax_ttft, [r.ttft_s for r in done], name, color, mine[0].ttft_slo_s)
        _cdf(ax_tpot, [r.tpot_s for r in done], name, color, mine[0].tpot_slo_s)
        ax_att.bar(i, sum(r.attained for r in mine) / len(mine), color=color)
    ax_ttft.set(xlabel="TTFT (ms)", ylabel="fraction of completed requests", title="TTFT")
    ax_tpot.set(xlabel="mean TPOT (ms)", title="TPOT")
    ax_att.set(ylabel="SLO attainment", ylim=(0, 1.05), title="attainment (offered requests)")
    ax_att.set_xticks(range(len(names)), names)
    for ax in (ax_ttft, ax_tpot):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    save_figure(fig, path, title)


def _cdf(ax: Axes, values_s: list[float | None], label: str, color: str, target_s: float) -> None:
    data = np.sort(np.asarray([v for v in values_s if v is not None], dtype=np.float64)) * 1e3
    if data.size:
        fractions = np.arange(1, data.size + 1) / data.size
        ax.step(data, fractions, where="post", label=label, color=color)
    ax.axvline(target_s * 1e3, color=color, linestyle="--", linewidth=0.8)


def plot_attainment_vs_rate(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str = "",
    target: float = 0.9,
) -> None:
    """Write a PNG of SLO attainment against offered rate, one line per policy (`series`:
    policy -> (rate, attainment) points), with the goodput target as a dotted line."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, points) in enumerate(series.items()):
        ordered = sorted(points)
        ax.plot(
            [p[0] for p in ordered], [p[1] for p in ordered], marker="o", label=name, color=f"C{i}"
        )
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="offered rate (requests/s)", ylabel="SLO attainment", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    save_figure(fig, path)
