"""build_workload in synthetic and trace modes, and the workload spec / file round trip."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads.arrivals import gamma, poisson
from hyperflexis.workloads.build import build_workload
from hyperflexis.workloads.lengths import FixedLengths, LogNormalLengths, UniformLengths
from hyperflexis.workloads.slo_mix import parse_slo_mix
from hyperflexis.workloads.spec import (
    RequestSpec,
    load_workload,
    make_workload,
    mean_rate_rps,
    save_workload,
)
from hyperflexis.workloads.trace import read_azure_trace

MIX = parse_slo_mix("interactive:0.3,standard:0.5,batch:0.2", SLOClasses())
REAL_TRACE = Path("/work/shared/traces/azure_llm_2023_conv.csv")


def synthetic(**overrides: object) -> tuple[RequestSpec, ...]:
    kwargs: dict[str, object] = {
        "seed": 11,
        "slo_mix": MIX,
        "arrival": gamma(5.0, 0.5),
        "prompt_lens": LogNormalLengths(300.0, 1.0),
        "output_lens": UniformLengths(8, 64),
        "num_requests": 200,
    }
    kwargs.update(overrides)
    return build_workload(**kwargs)  # type: ignore[arg-type]


def write_trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.0000000,100,10\n"
        "2023-11-16 18:00:01.0000000,200,0\n"
        "2023-11-16 18:00:03.0000000,3000,30\n"
        "2023-11-16 18:00:04.0000000,400,40\n"
    )
    return path


def test_synthetic_is_reproducible_ordered_and_exact() -> None:
    workload = synthetic()
    assert workload == synthetic()
    assert workload != synthetic(seed=12)
    assert len(workload) == 200
    assert [s.request_id for s in workload] == [f"req-{i:03d}" for i in range(200)]
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(workload))
    assert workload[0].arrival_s == 0.0
    assert all(8 <= s.output_len <= 64 for s in workload)
    assert Counter(s.slo_class for s in workload) == {
        "interactive": 60,
        "standard": 100,
        "batch": 40,
    }


def test_components_draw_from_independent_streams() -> None:
    base = synthetic()
    other_outputs = synthetic(output_lens=FixedLengths(5))
    assert [s.arrival_s for s in base] == [s.arrival_s for s in other_outputs]
    assert [s.prompt_len for s in base] == [s.prompt_len for s in other_outputs]
    assert [s.slo_class for s in base] == [s.slo_class for s in other_outputs]
    assert {s.output_len for s in other_outputs} == {5}


def test_rate_overrides_process_rate() -> None:
    slow = synthetic(rate_rps=5.0, num_requests=5000)
    fast = synthetic(rate_rps=50.0, num_requests=5000)
    assert mean_rate_rps([s.arrival_s for s in fast]) == pytest.approx(50.0, rel=0.1)
    np.testing.assert_allclose([s.arrival_s for s in slow], [10 * s.arrival_s for s in fast])


def test_length_fitting_applies_to_synthetic() -> None:
    workload = synthetic(max_prompt_len=128, max_total_len=150)
    assert max(s.prompt_len for s in workload) <= 128
    assert all(s.prompt_len + s.output_len <= 150 for s in workload)


def test_trace_mode(tmp_path: Path) -> None:
    path = write_trace(tmp_path)
    workload = build_workload(seed=0, slo_mix=MIX, trace=path, rate_rps=1.5, max_prompt_len=1000)
    assert [s.arrival_s for s in workload] == pytest.approx([0.0, 0.5, 1.5, 2.0])
    assert [s.prompt_len for s in workload] == [100, 200, 1000, 400]
    assert [s.output_len for s in workload] == [10, 1, 30, 40]
    same = build_workload(
        seed=0, slo_mix=MIX, trace=read_azure_trace(path), rate_rps=1.5, max_prompt_len=1000
    )
    assert same == workload


def test_trace_mode_prefix_and_length_scale(tmp_path: Path) -> None:
    workload = build_workload(
        seed=0, slo_mix=MIX, trace=write_trace(tmp_path), num_requests=3, length_scale=0.1
    )
    assert [s.arrival_s for s in workload] == [0.0, 1.0, 3.0]
    assert [s.prompt_len for s in workload] == [10, 20, 300]
    assert [s.output_len for s in workload] == [1, 1, 3]


@pytest.mark.skipif(not REAL_TRACE.exists(), reason="Azure conversation trace not present")
def test_real_trace_workload() -> None:
    workload = build_workload(seed=0, slo_mix=MIX, trace=REAL_TRACE, rate_rps=4.0)
    assert len(workload) == 19_366
    assert mean_rate_rps([s.arrival_s for s in workload]) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"trace": "x.csv", "arrival": poisson(1.0)}, "'arrival'"),
        ({"trace": "x.csv", "output_lens": FixedLengths(1)}, "'output_lens'"),
        ({"arrival": poisson(1.0), "num_requests": 3}, "give 'trace'"),
        ({"seed": -1, "trace": "x.csv"}, "'seed'"),
    ],
)
def test_invalid_combinations(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"seed": 0, "slo_mix": MIX, **kwargs}
    with pytest.raises(ValueError, match=needle):
        build_workload(**args)  # type: ignore[arg-type]


def test_request_spec_validation() -> None:
    with pytest.raises(ValueError, match="'prompt_len'"):
        RequestSpec("a", 0.0, 0, 1, "batch")
    with pytest.raises(ValueError, match="'arrival_s'"):
        RequestSpec("a", -1.0, 1, 1, "batch")
    with pytest.raises(ValueError, match="'output_len'"):
        RequestSpec("a", 0.0, 1, True, "batch")


def test_make_workload_sorts_ties_by_id_and_rejects_duplicates() -> None:
    b, a, c = (RequestSpec(i, t, 1, 1, "batch") for i, t in (("b", 1.0), ("a", 1.0), ("c", 0.5)))
    assert [s.request_id for s in make_workload([b, a, c])] == ["c", "a", "b"]
    with pytest.raises(ValueError, match="duplicate request_id 'a'"):
        make_workload([a, a])


def test_save_load_round_trip(tmp_path: Path) -> None:
    workload = synthetic(num_requests=20)
    path = tmp_path / "w.jsonl"
    save_workload(workload, path)
    assert load_workload(path) == workload
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"request_id": "x"}', *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"w.jsonl:2: invalid request"):
        load_workload(path)


def test_concat_phases_offsets_each_phase_and_cuts_it_at_its_duration() -> None:
    from hyperflexis.workloads import RequestSpec, concat_phases, make_workload

    first = make_workload(
        [RequestSpec(f"a{i}", t, 10, 5, "standard") for i, t in enumerate([0.0, 1.0, 2.5])]
    )
    second = make_workload(
        [RequestSpec(f"b{i}", t, 10, 5, "batch") for i, t in enumerate([0.5, 1.5])]
    )
    combined = concat_phases([(first, 2.0), (second, 1.0)])
    assert [(s.request_id, s.arrival_s) for s in combined] == [
        ("a0", 0.0),
        ("a1", 1.0),
        ("b0", 2.5),
    ]
