"""The built-in default model: deterministic bytes, created once, loads like a real checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.engine import ModelRunner, default_model_path
from hyperflexis.engine.default_model import VERSION
from hyperflexis.scheduler import KVBlockManager, ScheduledChunk, SchedulerOutput


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_created_deterministically_and_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path / "one"))
    first = default_model_path()
    assert first.parent == tmp_path / "one" / "models"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert default_model_path() == first  # the second call reuses it
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging left behind
    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path / "two"))
    second = default_model_path()
    assert second != first
    files = _files(first)
    assert set(files) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert files == _files(second)


def test_runner_defaults_to_it_and_generates(
    default_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed the cache with the session's copy so this test does not build the model again.
    target = tmp_path / "models" / f"tiny-llama-{VERSION}"
    shutil.copytree(default_model_dir, target)
    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))
    runner = ModelRunner(kv_cache_bytes=1 << 20)
    assert runner.model_path == target
    config = runner.config
    assert config.architecture == "LlamaForCausalLM"
    assert config.num_kv_heads < config.num_heads  # grouped-query attention
    assert 512 <= config.vocab_size <= 2048 and config.vocab_size == runner.tokenizer.vocab_size
    assert runner.max_model_len == 2048
    assert runner.eos_token_ids == frozenset(config.eos_token_ids)
    ids = runner.tokenizer.encode("The cat sat on the mat.")
    manager = KVBlockManager(runner.num_kv_blocks, runner.block_size)
    table = manager.allocate("r", len(ids) + 8)
    greedy = SamplingParams(temperature=0.0)
    tokens = [
        runner.execute(SchedulerOutput([ScheduledChunk("r", ids, 0, table, True, greedy, 0)]))
    ]
    for k in range(1, 8):
        chunk = ScheduledChunk("r", [tokens[-1]["r"]], len(ids) + k - 1, table, True, greedy, k)
        tokens.append(runner.execute(SchedulerOutput([chunk])))
    generated = [t["r"] for t in tokens]
    assert all(0 <= t < config.vocab_size for t in generated)
    assert len(set(generated)) > 1  # scaled init: the logits are not degenerate


def test_tokenizer_round_trips_and_chat_template_renders(default_model_dir: Path) -> None:
    from hyperflexis.engine import Tokenizer

    tokenizer = Tokenizer.from_dir(default_model_dir)
    text = "Hello! How are you today? Numbers: 42, 2024. Ünïcödé 日本 🙂"
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.encode(text, add_special_tokens=False) == ids[1:]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned from the corpus
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    assert not tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=False
    ).endswith("<|assistant|>\n")
    assert (
        tokenizer.encode_chat([{"role": "user", "content": "hi"}]).count(tokenizer.bos_token_id)
        == 1
    )
    with pytest.raises(ValueError, match="unknown role: robot"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "beep"}])


def test_a_lost_creation_race_uses_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hyperflexis.engine import default_model as module

    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))
    target = tmp_path / "models" / f"tiny-llama-{VERSION}"
    write = module.write_default_model

    def write_then_lose(folder: Path, seed: int) -> None:
        write(folder, seed)
        shutil.copytree(folder, target)  # another process renamed its copy in first

    monkeypatch.setattr(module, "write_default_model", write_then_lose)
    assert default_model_path() == target
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # staging removed
