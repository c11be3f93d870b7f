from __future__ import annotations

from pathlib import Path

import pytest

from hyperflexis.core import SLO, SLOClasses, mean_tpot_s


def test_builtin_classes_and_resolution() -> None:
    classes = SLOClasses()
    assert list(classes) == ["interactive", "standard", "batch"]
    assert classes.resolve().class_name == "standard"
    slo = classes.resolve("interactive", tpot_s=0.02)
    assert (slo.ttft_s, slo.tpot_s, slo.priority) == (0.5, 0.02, 0)
    with pytest.raises(ValueError, match="unknown SLO class 'gold'"):
        classes.resolve("gold")


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".toml", '[classes.chat]\nttft_ms = 300\ntpot_ms = 30\npriority = 0\nlate = "reject"\n'),
        (".yaml", "classes:\n  chat: {ttft_ms: 300, tpot_ms: 30, priority: 0, late: reject}\n"),
        (
            ".json",
            '{"classes": {"chat": {"ttft_s": 0.3, "tpot_s": 0.03, "priority": 0,'
            ' "late": "reject"}}}',
        ),
    ],
)
def test_config_file_formats(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"slo{suffix}"
    path.write_text(text)
    classes = SLOClasses.from_file(path)
    assert classes.default == "chat"
    assert classes["chat"].slo() == SLO(0.3, 0.03, 0, "chat", "reject")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"classes": {"a": {"ttft_ms": -1, "tpot_ms": 10}}}, "classes.a.ttft_ms"),
        ({"classes": {"a": {"tpot_ms": 10}}}, "classes.a.ttft_ms"),
        ({"classes": {"a": {"ttft_ms": 1, "tpot_ms": 1, "prio": 1}}}, "classes.a.prio"),
        ({"classes": {"a": {"ttft_ms": 1, "tpot_ms": 1, "priority": "hi"}}}, "classes.a.priority"),
        ({"classes": {"a": {"ttft_ms": 1, "tpot_ms": 1, "late": "drop"}}}, "classes.a.late"),
        ({"classes": {"a": {"ttft_ms": 1, "tpot_ms": 1}}, "default": "b"}, "default"),
        ({"classes": {"a": {"ttft_ms": 1, "tpot_ms": 1}}, "api_keys": {"k": "z"}}, "api_keys.k"),
        ({"klasses": {}}, "classes"),
    ],
)
def test_bad_config_names_the_field(data: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        SLOClasses.from_dict(data)


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "slo.toml"
    bad.write_text("classes = [")
    with pytest.raises(ValueError, match="invalid SLO config"):
        SLOClasses.from_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        SLOClasses.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize("field", ["ttft_s", "tpot_s"])
def test_slo_values_checked(field: str) -> None:
    values = {"ttft_s": 1.0, "tpot_s": 0.1, field: 0.0}
    with pytest.raises(ValueError, match=field):
        SLO(**values)


def test_mean_tpot_is_the_time_after_the_first_token_over_the_tokens_after_it() -> None:
    # (E2E - TTFT) / (tokens - 1): arrival 1 s, first token 1.5 s, end 2.5 s, 5 tokens.
    assert mean_tpot_s(1.5, 2.5, 5) == pytest.approx(((2.5 - 1.0) - (1.5 - 1.0)) / 4)
    assert mean_tpot_s(1.5, 2.5, 1) is None  # one token: no gap to measure
    assert mean_tpot_s(None, 2.5, 5) is None  # never got a first token
    assert mean_tpot_s(1.5, None, 5) is None  # not ended
