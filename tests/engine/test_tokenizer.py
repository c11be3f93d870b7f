"""Tokenizer files and the incremental detokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hyperflexis.engine import IncrementalDetokenizer, Tokenizer

TEXT = "Héllo wörld! 日本語のテキスト 🙂👍 done."


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(default_model_dir)


def test_incremental_detokenizer_holds_back_split_characters(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    # The corpus is English, so these characters span several byte-level tokens each.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add_token(i) for i in ids]
    assert "".join(deltas) == TEXT == detok.text
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some tokens had to wait for the rest of their character
    assert detok.output_ids == ids


def test_incremental_detokenizer_with_prompt_and_special_tokens(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("The cat")
    output = tokenizer.encode(" sat on the mat.", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    assert eos is not None
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=prompt)
    assert detok.add_tokens([*output, eos]) == " sat on the mat."
    assert detok.flush() == ""
    shown = IncrementalDetokenizer(tokenizer, prompt_ids=prompt, skip_special_tokens=False)
    assert shown.add_tokens([*output, eos]) == " sat on the mat.</s>"


def test_flush_emits_an_incomplete_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add_tokens(ids[:-1]) == ""
    assert detok.flush().endswith("\ufffd")


def test_missing_files_are_named(default_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    shutil.copy(default_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json"):
        Tokenizer.from_dir(tmp_path)


def test_config_variants(default_model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(default_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": {"content": "</s>"},
        "add_bos_token": False,
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ messages[0]['content'] | tojson }}"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    tokenizer = Tokenizer.from_dir(tmp_path)
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token_ids == frozenset({1, 2})
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "é"}]) == '"é"'


def test_no_chat_template_is_a_clear_error(default_model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(default_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="chat_template"):
        Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])


def test_incremental_detokenizer_keeps_sentencepiece_spaces(tmp_path: Path) -> None:
    # Llama 2 / Mistral style: "▁" marks a word start and the decoder drops a leading one, so
    # decoding tokens one at a time would glue words together.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from hyperflexis.engine.default_model import CORPUS

    backend = HFTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(CORPUS.splitlines(), trainer)
    tokenizer = Tokenizer(backend, bos_token="<s>", eos_token="</s>", add_bos_token=True)
    prompt = tokenizer.encode("The cat sat")
    text = " on the mat by the window."
    output = tokenizer.encode("The cat sat" + text, add_special_tokens=False)[len(prompt) - 1 :]
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=prompt)
    assert "".join(detok.add_token(t) for t in output) == text
