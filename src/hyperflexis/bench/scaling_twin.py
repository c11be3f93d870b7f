"""The elastic simulator's twin of a live `serve --scaler` run (`benchmarks/serve_scaling.py`),
from what the live run measured: `measured_row` (the live row's part the twin needs, kept in the
results so a prediction can be redone offline), `pooled_times` (the transitions' times over a
machine's runs) and `predict` (the twin as measured, beside the older uniform and raw ones)."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperflexis.bench.fidelity import fit_window, scaled_profile, write_refit
from hyperflexis.bench.live_steps import StepSampler, transition_times
from hyperflexis.core.slo import SLOClasses
from hyperflexis.perf.profiled import ProfiledCostModel
from hyperflexis.sim.deployment import Deployment
from hyperflexis.sim.elastic_setup import ScalingSetup, simulate_elastic
from hyperflexis.sim.setup import SimSetup
from hyperflexis.workloads.spec import Workload

SIM_KEYS = ("attainment", "instance_seconds", "peak_instances", "num_decisions")


@dataclass(frozen=True, slots=True)
class TwinSetup:
    """The live run's settings the twin shares: the server's profile, where the cluster
    starts, the scaler, its per-pool bounds and control interval; the noise seed."""

    profile: Path
    start: Deployment
    scaler: str
    max_instances: int
    control_interval_s: float
    seed: int = 0


def measured_row(sampler: StepSampler, events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What `predict` needs of a live run: the instances' mean correction over it (what their
    schedulers planned with: `plan_factor`), the model refitted on their steps (`refit`, None
    with too few), their KV blocks, the measured start-up and switch times (`transition_times`)."""
    rows = sampler.rows()
    try:
        model, cv = fit_window(sampler.first, rows)
        refit: dict[str, Any] | None = {"coefficients": list(model.coefficients), "cv": cv}
    except ValueError:
        refit = None
    blocks = [int(r["num_blocks"]) for r in rows if r.get("num_blocks")]
    return {
        "plan_factor": sampler.mean(),
        "refit": refit,
        "num_kv_blocks": min(blocks) if blocks else None,
        **transition_times(events),
    }


def pooled_times(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """The mean measured start-up (None without one: the scaler's estimate) and role switch
    (1 s, `ScalingSetup`'s default, without one) over live rows: the machine's, not a policy's.
    A row without them (an older results file) has them from its `events`."""
    measured = [r if "start_s" in r else transition_times(r.get("events", ())) for r in rows]
    starts = [float(s) for row in measured for s in row["start_s"]]
    switches = [float(s) for row in measured for s in row["switch_s"]]
    return {
        "start_s": statistics.fmean(starts) if starts else None,
        "role_switch_s": statistics.fmean(switches) if switches else 1.0,
    }


def predict(
    twin: TwinSetup,
    row: Mapping[str, Any],
    times: Mapping[str, float | None],
    classes: SLOClasses,
    workload: Workload,
) -> dict[str, Any]:
    """The elastic simulator on the live run's workload: as the live run measured it
    (`measured`: `measured_setup`, the measured transition times), every step slowed by the
    final correction factor and planned with the raw profile (`uniform`), as profiled (`raw`).
    A twin whose run fails (its scaler decides what its lifecycle refuses) is `{"error": ...}`."""
    factor = row["correction_factor"] or 1.0
    out: dict[str, Any] = {"correction_factor": factor, "measured_times": dict(times)}
    profile, start = str(twin.profile), twin.start
    with tempfile.TemporaryDirectory() as tmp:
        setups = {
            "measured": measured_setup(twin, row, Path(tmp)),
            "uniform": SimSetup(deployment=start, profile_path=profile, profile_error=factor - 1),
            "raw": SimSetup(deployment=start, profile_path=profile),
        }
        for name, setup in setups.items():
            scaling = _scaling(twin, times if name == "measured" else {})
            try:
                doc = simulate_elastic(setup, scaling, classes, workload)
            except RuntimeError as error:  # a decision the lifecycle refuses: that twin fails
                out[name] = {"error": str(error)}
                continue
            out[name] = {key: doc[key] for key in SIM_KEYS}
    return out


def _scaling(twin: TwinSetup, times: Mapping[str, float | None]) -> ScalingSetup:
    switch_s = times.get("role_switch_s")
    return ScalingSetup(
        scaler=twin.scaler,
        min_instances=1,
        max_instances=twin.max_instances,
        control_interval_s=twin.control_interval_s,
        link_policy="all",
        role_switch_s=1.0 if switch_s is None else switch_s,
        start_s=times.get("start_s"),
    )


def measured_setup(twin: TwinSetup, row: Mapping[str, Any], tmp: Path) -> SimSetup:
    """The twin's cluster: it plans with the profile x the live instances' mean correction;
    each step takes the refitted model with its residual spread as noise (a row without a
    refit: the final correction over the planning factor); the live KV block count."""
    factor = row["correction_factor"] or 1.0
    plan = row.get("plan_factor") or factor
    planned = scaled_profile(twin.profile, plan, tmp / "planned.json")
    refit, truth, cv, bias = row.get("refit"), None, 0.0, factor / plan - 1
    if refit is not None:
        c0, c1, c2, c3, c4 = (float(c) for c in refit["coefficients"])
        model = ProfiledCostModel((c0, c1, c2, c3, c4))
        truth = str(write_refit(twin.profile, model, tmp / "refit.json"))
        cv, bias = float(refit["cv"]), 0.0
    return SimSetup(
        deployment=twin.start,
        profile_path=str(planned),
        num_kv_blocks=row.get("num_kv_blocks"),
        step_noise_cv=cv,
        profile_error=bias,
        noise_seed=twin.seed,
        charge_profile_path=truth,
    )
