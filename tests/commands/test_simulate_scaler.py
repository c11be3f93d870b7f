"""`hyperflexis simulate --scaler`: an elastic run writes cost, scaling counts and a time series,
plots it, and the scaling options are refused without --scaler or with a sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperflexis.cli import main

SMALL = ["--num-requests", "200", "--rate", "20", "--seed", "1"]


def test_scaled_run_writes_cost_and_time_series(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    scaling = ["--scaler", "hyperflexis", "--max-instances", "4", "--control-interval", "2"]
    scaling += ["--drain-deadline-s", "1.5"]
    tail = ["--series-interval", "2", "--out", str(out)]
    code = main(["simulate", "--instances", "1", *SMALL, *scaling, *tail])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["num_requests"] == 200
    assert doc["config"]["scaling"]["scaler"] == "hyperflexis"
    assert doc["config"]["scaling"]["drain_deadline_s"] == 1.5
    assert doc["num_migrations"] >= 0
    assert doc["instance_seconds"] == pytest.approx(sum(doc["instance_seconds_by_state"].values()))
    assert doc["cost_usd"] > 0
    series = doc["time_series"]
    assert series["bin_s"] == 2
    assert set(series["instances"]) == {"mixed"}
    assert len(series["attainment"]) == len(series["start_s"]) == len(series["arrival_rps"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_static_scaler_on_pd_costs_its_fixed_cluster(tmp_path: Path) -> None:
    out = tmp_path / "pd.json"
    args = ["simulate", "--prefill", "1", "--decode", "2", *SMALL, "--scaler", "static"]
    assert main([*args, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["num_decisions"] == {}
    assert doc["instance_seconds"] == pytest.approx(3 * doc["duration_s"])
    assert set(doc["time_series"]["instances"]) == {"prefill", "decode"}


@pytest.mark.parametrize(
    "extra",
    [
        ["--min-instances", "2"],  # needs --scaler
        ["--drain-deadline-s", "2"],  # needs --scaler
        ["--scaler", "static", "--drain-deadline-s", "-1"],
        ["--scaler", "hyperflexis", "--sweep-rates", "1,2"],  # not with a sweep
        ["--scaler", "no-such-scaler"],
        ["--scaler", "static", "--instances", "5", "--max-instances", "4"],  # outside the bounds
    ],
)
def test_bad_scaling_options_fail(tmp_path: Path, extra: list[str]) -> None:
    assert main(["simulate", *SMALL, *extra, "--out", str(tmp_path / "x.json")]) == 2


def test_the_default_drain_deadline_is_the_servers() -> None:
    from hyperflexis.cluster.migration import DEFAULT_DRAIN_DEADLINE_S
    from hyperflexis.commands import simulate_scaler
    from hyperflexis.server.config import ServerConfig
    from hyperflexis.sim.elastic_setup import ScalingSetup

    assert simulate_scaler.DEFAULT_DRAIN_DEADLINE_S == DEFAULT_DRAIN_DEADLINE_S
    assert ScalingSetup().drain_deadline_s == DEFAULT_DRAIN_DEADLINE_S
    assert ServerConfig.__dataclass_fields__["drain_deadline_s"].default == DEFAULT_DRAIN_DEADLINE_S
