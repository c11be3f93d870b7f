"""`python -m hyperflexis.demo` runs end to end on the built-in model (built in a tmp cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperflexis import demo


def test_demo_prints_completions_and_a_latency_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out  # the model was built in the tmp cache, not ~/.cache
    assert "TTFT ms" in out and "E2E ms" in out and "tok/s" in out
    rows = [line for line in out.splitlines() if line[:2].strip().isdigit()]
    assert len(rows) == len(demo.PROMPTS)
    for (prompt, slo_class, _), row in zip(demo.PROMPTS, rows, strict=True):
        assert slo_class in row
        assert repr(prompt) in out
