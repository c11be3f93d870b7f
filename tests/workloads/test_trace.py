"""Azure trace reading (real file when present, small written files otherwise) and rate scaling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hyperflexis.workloads.spec import mean_rate_rps
from hyperflexis.workloads.trace import read_azure_trace, scale_to_rate

REAL_TRACE = Path("/work/shared/traces/azure_llm_2023_conv.csv")
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def write(tmp_path: Path, *rows: str, name: str = "trace.csv", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(newline.join((HEADER, *rows)).encode() + newline.encode())
    return path


@pytest.mark.skipif(not REAL_TRACE.exists(), reason="Azure conversation trace not present")
def test_real_trace() -> None:
    trace = read_azure_trace(REAL_TRACE)
    assert trace.num_requests == 19_366
    assert trace.arrivals_s[0] == 0.0
    assert np.all(np.diff(trace.arrivals_s) >= 0)
    # First rows: 18:15:46.6805900 then 18:15:50.9951690; last 19:14:08.4025270.
    assert trace.arrivals_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert trace.arrivals_s[-1] == pytest.approx(3501.721937, abs=1e-6)
    assert (trace.prompt_lens[0], trace.output_lens[0]) == (374, 44)
    assert trace.prompt_lens.min() >= 1 and trace.output_lens.min() >= 1
    assert read_azure_trace(REAL_TRACE, max_requests=100).num_requests == 100


def test_seven_digit_fractions_day_boundary_and_crlf(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "2023-11-16 23:59:59.9999999,10,5",
        "2023-11-17 00:00:00.0000001,20,0",
        "2023-11-17T00:00:01,30,7",
        newline="\r\n",
    )
    trace = read_azure_trace(path)
    np.testing.assert_allclose(trace.arrivals_s, [0.0, 2e-7, 1.0000001], atol=1e-9)
    np.testing.assert_array_equal(trace.prompt_lens, [10, 20, 30])
    np.testing.assert_array_equal(trace.output_lens, [5, 1, 7])  # 0 generated tokens -> 1


def test_zone_suffixes_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "zoned.csv"
    path.write_text(
        "Extra,TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "x,2024-05-10 01:00:00.5+01:00,1,1\n"
        "y,2024-05-10 00:00:01Z,2,2\n"
    )
    trace = read_azure_trace(path)
    np.testing.assert_allclose(trace.arrivals_s, [0.0, 0.5])
    np.testing.assert_array_equal(trace.prompt_lens, [1, 2])


def test_out_of_order_rows_are_sorted(tmp_path: Path) -> None:
    path = write(tmp_path, "2023-01-01 00:00:02,2,2", "2023-01-01 00:00:01,1,1")
    trace = read_azure_trace(path)
    np.testing.assert_allclose(trace.arrivals_s, [0.0, 1.0])
    np.testing.assert_array_equal(trace.prompt_lens, [1, 2])


def test_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "2023-01-01 00:00:00,1,1", "", "2023-01-01 00:00:01,1,1", "")
    assert read_azure_trace(path).num_requests == 2


GOOD = "2023-11-16 18:15:46.6805900,374,44"


@pytest.mark.parametrize(
    ("bad_row", "needle"),
    [
        ("2023-11-16 18:15:47.1,374", "expected 3 fields"),
        ("2023-11-16 18:15:47.1,37x,44", "invalid ContextTokens '37x'"),
        ("2023-11-16 18:15:47.1,374,4.5", "invalid GeneratedTokens '4.5'"),
        ("2023-11-16 18:15:47.1,374,1_000", "invalid GeneratedTokens"),
        ("2023-11-16 18:15:47.1,-3,44", "invalid ContextTokens -3"),
        ("2023-11-16 18:15:47.1,3,-1", "invalid GeneratedTokens -1"),
        ("16/11/2023 18:15,3,4", "invalid TIMESTAMP"),
        ("2023-02-30 18:15:47,3,4", "invalid TIMESTAMP"),
        ("2023-11-16 25:15:47,3,4", "invalid TIMESTAMP"),
        (",3,4", "invalid TIMESTAMP"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, bad_row: str, needle: str) -> None:
    # The bad row is data row 3, after a blank line: physical line 5 (the header is line 1).
    path = write(tmp_path, GOOD, GOOD, "", bad_row, GOOD, name="bad-trace.csv")
    with pytest.raises(ValueError, match=needle) as info:
        read_azure_trace(path)
    assert "bad-trace.csv:5:" in str(info.value)


def test_missing_header_column(tmp_path: Path) -> None:
    path = tmp_path / "noheader.csv"
    path.write_text(GOOD + "\n")
    with pytest.raises(ValueError, match=r"noheader.csv:1: .*missing TIMESTAMP"):
        read_azure_trace(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read trace"):
        read_azure_trace(tmp_path / "absent.csv")


def test_max_requests_stops_before_later_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, GOOD, "garbage")
    assert read_azure_trace(path, max_requests=2).num_requests == 2
    with pytest.raises(ValueError, match="'max_requests'"):
        read_azure_trace(path, max_requests=-1)


def test_scale_to_rate_sets_mean_rate_and_keeps_shape() -> None:
    arrivals = np.array([10.0, 11.0, 13.0, 20.0])  # mean rate 3 / 10 s
    scaled = scale_to_rate(arrivals, 3.0)
    assert mean_rate_rps(scaled) == pytest.approx(3.0)
    np.testing.assert_allclose(scaled, [0.0, 0.1, 0.3, 1.0])
    np.testing.assert_allclose(scale_to_rate(arrivals, 0.15), [0.0, 2.0, 6.0, 20.0])


def test_scale_to_rate_edge_cases() -> None:
    np.testing.assert_array_equal(scale_to_rate(np.array([5.0]), 2.0), [0.0])
    assert scale_to_rate(np.array([]), 2.0).shape == (0,)
    np.testing.assert_array_equal(scale_to_rate(np.array([1.0, 2.0]), math.inf), [0.0, 0.0])
    with pytest.raises(ValueError, match="same time"):
        scale_to_rate(np.array([1.0, 1.0]), 2.0)
    with pytest.raises(ValueError, match="'target_rate_rps'"):
        scale_to_rate(np.array([1.0, 2.0]), 0.0)


@pytest.mark.skipif(not REAL_TRACE.exists(), reason="Azure conversation trace not present")
def test_scale_real_trace() -> None:
    trace = read_azure_trace(REAL_TRACE)
    scaled = scale_to_rate(trace.arrivals_s, 20.0)
    assert mean_rate_rps(scaled) == pytest.approx(20.0)
    assert trace.mean_rate_rps == pytest.approx(19_365 / 3501.721937)
