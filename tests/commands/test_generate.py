"""`hyperflexis generate` through `cli.main`: help, a completion on stdout, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperflexis import LLM, SamplingParams
from hyperflexis.cli import main


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--prompt", "--model", "--max-tokens", "--temperature", "--seed", "--chat"):
        assert option in out
    assert "fcfs" in out  # policies come from the registry


def test_prints_the_greedy_completion(
    tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["generate", "--prompt", "w5 w6", "--model", str(tiny_llama_dir), "--max-tokens", "6"]
    )
    assert code == 0
    captured = capsys.readouterr()
    expected = LLM(tiny_llama_dir).generate("w5 w6", SamplingParams(max_tokens=6, temperature=0))
    text = expected[0].outputs[0].text
    assert text
    assert captured.out == text + "\n"
    assert "finish_reason=" in captured.err


def test_chat_and_sampling_options(
    tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--prompt", "w7", "--model", str(tiny_llama_dir), "--chat"]
    argv += ["--temperature", "0.9", "--seed", "3", "--max-tokens", "5"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # seeded: the same text again


def test_errors(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(tiny_llama_dir)]
    assert main(["generate", "--prompt", "w5", *model, "--temperature", "-1"]) == 2
    assert "'temperature'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "w5", "--policy", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
