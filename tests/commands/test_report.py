"""`hyperflexis report`: every summary figure recomputed from the per-request records equals the
stored one, for a simulated run, a simulated sweep and a live bench run; a changed record shows."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from hyperflexis.bench.client import INSTANCE_HEADER, ClientConfig, run_benchmark
from hyperflexis.bench.records import read_rows, write_rows
from hyperflexis.bench.report import bench_summary, write_jsonl
from hyperflexis.cli import main
from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads import RequestSpec, make_workload

# One instance past its capacity, so requests miss in both TPOT views and the views differ.
OVERLOAD = ["--num-requests", "120", "--instances", "1", "--prompt-lens", "lognormal:mean=900"]
OVERLOAD += ["--output-lens", "lognormal:mean=120", "--seed", "3"]


def _report(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["report", str(path)])
    return code, capsys.readouterr().out


def test_a_simulated_run_recomputes_to_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    assert main(["simulate", *OVERLOAD, "--rate", "80", "--policy", "fcfs", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["records"] == "results.requests.jsonl"
    rows = read_rows(tmp_path / doc["records"])
    assert len(rows) == doc["num_requests"] == 120
    assert all(row["instance"] == "mixed-0" and row["finish_reason"] for row in rows)
    assert doc["attainment"] < 1.0  # something to recompute
    code, text = _report(out, capsys)
    assert code == 0, text
    assert "every recomputed figure equals the stored summary" in text
    assert "per-token" in text and (tmp_path / "results.report.png").is_file()
    # A record changed after the run shows in the figures it moves.
    rows[0]["first_token_s"] = rows[0]["finish_s"] = rows[0]["sent_s"] + 100.0
    write_rows(rows, tmp_path / doc["records"])
    code, text = _report(out, capsys)
    assert code == 1 and "attainment" in text and "ttft_s" in text


def test_a_sweep_recomputes_every_run_and_both_goodputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep.json"
    args = [*OVERLOAD, "--policies", "hyperflexis,fcfs", "--sweep-rates", "5,80"]
    assert main(["simulate", *args, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["goodput_at_90_per_token"]) == {"hyperflexis", "fcfs"}
    for run in doc["runs"]:
        assert run["attainment_per_token"] <= run["attainment"]
        assert (tmp_path / run["records"]).is_file()
    code, text = _report(out, capsys)
    assert code == 0, text
    assert "goodput@90%, per-token fcfs" in text


def test_a_live_bench_record_file_recomputes_to_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal served
        if request.method == "GET":
            return httpx.Response(404)  # the warm-up probe
        served += 1
        if served == 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in "abc"]
        chunks[-1]["choices"][0]["finish_reason"] = "length"
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        headers = {INSTANCE_HEADER: f"mixed-{served % 2}"}
        return httpx.Response(200, content=body.encode(), headers=headers)

    classes = SLOClasses()
    specs = [RequestSpec(f"r{i}", 0.01 * i, 10, 3, "standard") for i in range(4)]
    config = ClientConfig("http://test", "m", show_progress=False)
    run = run_benchmark(
        make_workload(specs), classes, config, transport=httpx.MockTransport(handler)
    )
    summary = bench_summary(run, instance_seconds=2 * run.duration_s)
    write_jsonl(run.results, tmp_path / "requests.jsonl")
    summary["records"] = "requests.jsonl"
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(summary))
    rows = read_rows(tmp_path / "requests.jsonl")
    assert [row["status"] for row in rows] == ["completed", "rejected", "completed", "completed"]
    assert rows[1]["finish_reason"] == "rejected" and rows[1]["instance"] is None
    assert rows[0]["instance"] == "mixed-1" and rows[0]["finish_reason"] == "length"
    assert rows[0]["max_itl_s"] == max(rows[0]["itls_s"])
    code, text = _report(out, capsys)
    assert code == 0, text
    assert "standard" in text


def test_results_without_records_are_an_error(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"num_requests": 1}))
    assert main(["report", str(bare)]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"records": "rows.jsonl"}))
    (tmp_path / "rows.jsonl").write_text('{"request_id": "a"}\n')
    assert main(["report", str(broken)]) == 2
