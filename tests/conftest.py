"""Fixtures shared across the test tree: a tiny random Llama checkpoint written by transformers'
`save_pretrained`, with a word-level tokenizer so our loader accepts the folder; the built-in
default model in a tmp folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_VOCAB_SIZE = 128
TINY_EOS_ID = 1
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }} {% for m in messages %}{{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}w3{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama (GQA, 128 tokens, 256 positions) as transformers saves it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = transformers.LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=TINY_EOS_ID,
        tie_word_embeddings=False,
        initializer_range=0.1,  # peaked logits: greedy ties would make parity tests flaky
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({f"w{i}": i for i in range(3, TINY_VOCAB_SIZE)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "add_bos_token": True,
                "chat_template": TINY_CHAT_TEMPLATE,
            }
        )
    )
    return folder


@pytest.fixture(scope="session")
def server_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in default model, written once per session (server and backend tests)."""
    from hyperflexis.engine.default_model import SEED, write_default_model

    folder = tmp_path_factory.mktemp("server-model")
    write_default_model(folder, SEED)
    return folder
