"""A picture of elastic runs over time (`ElasticResult.time_series`): demand, instances by role,
and SLO attainment per interval, one line per run so scalers compare on one figure.
matplotlib's Agg backend, so it works without a display."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hyperflexis.bench.plots import pyplot, save_figure

STYLES = ("-", "--", ":", "-.")


def plot_scaling(
    series_by_run: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = ""
) -> None:
    """Write a PNG with three panels sharing the time axis (minutes): demand (requests/s, and
    prompt and output tokens/s on a second axis), instances by role (their total too when there
    are several roles), and attainment of the requests arriving in each interval. Each value of
    `series_by_run` is one run's `time_series`; the runs share the workload, so demand is drawn
    from the first."""
    plt = pyplot()

    if not series_by_run:
        raise ValueError("invalid parameter 'series_by_run': no runs to plot")
    fig, (ax_demand, ax_instances, ax_attain) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    first = next(iter(series_by_run.values()))
    minutes = [(s + first["bin_s"] / 2) / 60 for s in first["start_s"]]
    ax_demand.plot(minutes, first["arrival_rps"], color="black", label="requests/s")
    ax_demand.set(ylabel="requests/s", title="demand")
    ax_tokens = ax_demand.twinx()
    ax_tokens.plot(minutes, first["prompt_tokens_s"], color="C0", alpha=0.5, label="prompt tok/s")
    ax_tokens.plot(minutes, first["output_tokens_s"], color="C3", alpha=0.5, label="output tok/s")
    ax_tokens.set(ylabel="tokens/s")
    lines = ax_demand.get_legend_handles_labels()
    more = ax_tokens.get_legend_handles_labels()
    ax_demand.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="upper left")

    for k, (name, series) in enumerate(series_by_run.items()):
        color = f"C{k}"
        x = [(s + series["bin_s"] / 2) / 60 for s in series["start_s"]]
        roles = sorted(series["instances"])
        for r, role in enumerate(roles):
            label = f"{name} {role}" if len(roles) > 1 else name
            ax_instances.plot(
                x, _gaps(series["instances"][role]), color=color, linestyle=STYLES[r], label=label
            )
        if len(roles) > 1:
            totals = [
                None if any(v is None for v in values) else sum(values)
                for values in zip(*(series["instances"][role] for role in roles), strict=True)
            ]
            ax_instances.plot(
                x, _gaps(totals), color=color, linewidth=2.2, alpha=0.6, label=f"{name} total"
            )
        ax_attain.plot(x, _gaps(series["attainment"]), color=color, marker=".", label=name)
    ax_instances.set(ylabel="instances (mean per interval)", title="instances by role")
    ax_instances.legend(fontsize="x-small", ncol=2)
    ax_attain.set(
        xlabel="minutes", ylabel="SLO attainment", ylim=(0, 1.02), title="attainment by arrival"
    )
    ax_attain.legend(fontsize="small")
    for ax in (ax_demand, ax_instances, ax_attain):
        ax.grid(alpha=0.3)
    save_figure(fig, path, title)


def _gaps(values: Any) -> list[float]:
    """None as NaN, so matplotlib leaves a gap."""
    return [float("nan") if v is None else float(v) for v in values]
