"""`hyperflexis simulate`: a run writes the results JSON (the same bytes for the same seed, but
for the wall time), a sweep writes a table, a plot and goodput, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperflexis.cli import main

TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_2023_conv.csv"
SYNTHETIC = ["--num-requests", "40", "--rate", "8", "--prompt-lens", "200", "--output-lens", "20"]


def _run(tmp_path: Path, *args: str, name: str = "out.json") -> dict[str, object]:
    out = tmp_path / name
    assert main(["simulate", *args, "--out", str(out)]) == 0
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


@pytest.mark.skipif(not TRACE.is_file(), reason="needs the shared Azure trace")
def test_trace_run_writes_results_and_repeats_byte_for_byte(tmp_path: Path) -> None:
    args = ["--trace", str(TRACE), "--num-requests", "150", "--rate", "20", "--seed", "7"]
    first = _run(tmp_path, *args, name="a.json")
    for key in ("num_requests", "attainment", "attainment_by_class", "goodput_rps"):
        assert key in first
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(first[key]) == {"p50", "p90", "p99", "mean"}  # type: ignore[arg-type]
    assert first["num_requests"] == 150
    assert first["instance_seconds"] > 0 and first["cost_usd"] > 0  # type: ignore[operator]
    assert first["config"]["dispatch"] == "hyperflexis"  # type: ignore[index]
    _run(tmp_path, *args, name="b.json")
    texts = [(tmp_path / n).read_text().splitlines() for n in ("a.json", "b.json")]
    differing = [a for a, b in zip(*texts, strict=True) if a != b]
    assert all('"sim_wall_s"' in line or '"records"' in line for line in differing)
    records = [(tmp_path / f"{n}.requests.jsonl").read_text() for n in ("a", "b")]
    assert records[0] == records[1] and len(records[0].splitlines()) == 150


def test_step_noise_is_echoed_seeded_and_changes_the_run(tmp_path: Path) -> None:
    exact = _run(tmp_path, *SYNTHETIC, "--seed", "4", name="exact.json")
    noisy = ["--step-noise", "0.3", "--profile-error", "0.2", "--seed", "4"]
    first = _run(tmp_path, *SYNTHETIC, *noisy, name="a.json")
    again = _run(tmp_path, *SYNTHETIC, *noisy, name="b.json")
    config = first["config"]
    assert config["step_noise_cv"] == 0.3 and config["profile_error"] == 0.2  # type: ignore[index]
    assert config["noise_seed"] == 4  # type: ignore[index]
    first.pop("sim_wall_s")
    again.pop("sim_wall_s")
    assert first == again
    assert first["duration_s"] != exact["duration_s"]


def test_pd_synthetic_run(tmp_path: Path) -> None:
    doc = _run(tmp_path, *SYNTHETIC, "--prefill", "1", "--decode", "2", "--policy", "distserve")
    assert doc["num_requests"] == 40
    assert doc["config"]["num_decode"] == 2  # type: ignore[index]
    assert doc["config"]["dispatch"] == "distserve"  # type: ignore[index]


def test_sweep_writes_table_plot_and_goodput(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _run(
        tmp_path,
        *SYNTHETIC,
        "--instances",
        "1",
        "--policies",
        "fcfs,hyperflexis",
        "--sweep-rates",
        "4,400",
        name="sweep.json",
    )
    runs = doc["runs"]
    assert isinstance(runs, list)
    assert [(r["policy"], r["rate"]) for r in runs] == [
        ("fcfs", 4.0),
        ("fcfs", 400.0),
        ("hyperflexis", 4.0),
        ("hyperflexis", 400.0),
    ]
    assert runs[0]["config"]["dispatch"] == "round-robin"
    assert runs[2]["config"]["dispatch"] == "hyperflexis"
    assert set(doc["goodput_at_90"]) == {"fcfs", "hyperflexis"}  # type: ignore[arg-type]
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "goodput@90% fcfs" in printed and "hyperflexis" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hardware", "tpu9"], "unknown hardware"),
        (["--model", "gpt-9"], "unknown model"),
        (["--policy", "lifo"], "unknown scheduling policy"),
        (["--dispatch", "random"], "unknown dispatcher"),
        (["--policies", "fcfs,lifo", "--sweep-rates", "1"], "unknown scheduling policy"),
        (["--sweep-rates", "1,-2"], "--sweep-rates"),
        (["--sweep-rates", "1,x"], "not a number"),
        (["--rate", "0"], "--rate"),
        (["--prefill", "2"], "both --prefill and --decode"),
        (["--prefill", "0", "--decode", "2"], "must be >= 1"),
        (["--instances", "3", "--prefill", "1", "--decode", "1"], "does not match"),
        (["--slo-mix", "vip:1"], "unknown SLO class"),
        (["--max-num-batched-tokens", "0"], "invalid --max-num-batched-tokens 0: must be >= 1"),
        (["--tpot-margin", "1"], "invalid --tpot-margin 1.0: must be in [0, 1)"),
        (["--step-noise", "-0.1"], "invalid step noise CV -0.1"),
        (["--profile-error", "-1"], "invalid profile error -1.0"),
    ],
)
def test_bad_input_exits_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--num-requests", "5", "--rate", "1"]
    code = main(["simulate", *base, *args, "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_profiled_latency_model(tmp_path: Path) -> None:
    from hyperflexis.perf import ProfiledCostModel, ProfileSample, write_profile

    # A profile 10x slower than an H100: the same load then misses its SLOs.
    samples = [
        ProfileSample(prefills=[(512, 0)], decodes=[], step_s=0.4),
        ProfileSample(prefills=[], decodes=[1000] * 8, step_s=0.07),
    ]
    slow = ProfiledCostModel((0.07, 7e-4, 0.0, 0.0, 0.0))
    profile = tmp_path / "slow.json"
    write_profile(profile, samples, slow, {"model": "m", "device": "d", "dtype": "bf16"})
    analytic = _run(tmp_path, *SYNTHETIC, name="a.json")
    profiled = _run(tmp_path, *SYNTHETIC, "--profile", str(profile), name="p.json")
    assert profiled["config"]["latency_model"] == "profiled"  # type: ignore[index]
    assert profiled["attainment"] < analytic["attainment"]  # type: ignore[operator]


def test_a_steady_sweep_offers_the_same_duration_at_every_rate(tmp_path: Path) -> None:
    args = ["--prompt-lens", "200", "--output-lens", "20", "--duration", "5", "--no-records"]
    doc = _run(tmp_path, *args, "--sweep-rates", "4,8")
    runs = doc["runs"]
    assert [r["num_requests"] for r in runs] == [21, 41]  # type: ignore[index]
    assert doc["steady_duration_s"] == 5.0
    assert doc["goodput_bound_at_90"]["rate_rps"] > 0  # type: ignore[index]
    assert not (tmp_path / "out.requests").exists()
    both = ["--num-requests", "3", "--duration", "5", "--rate", "1", "--out", str(tmp_path / "x")]
    assert main(["simulate", *both]) == 2  # synthetic arrivals: one or the other
