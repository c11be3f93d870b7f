"""The built-in default model: a tiny random-weight Llama checkpoint in Hugging Face format.

With no `--model`, HyperFlexis runs end to end on any laptop with this checkpoint. It is created
once per cache folder, deterministically from a seed (same bytes on every machine), and loads
through the same loader and tokenizer code as a real checkpoint, so it exercises that path too.
Its outputs are meaningless text; its cost profile is a real (small) transformer's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from hyperflexis import env

if TYPE_CHECKING:
    import torch

VERSION = "v1"  # bump when anything below changes, so stale cached copies are not reused
SEED = 1234
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
TARGET_VOCAB_SIZE = 1024
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
}
INIT_STD = 0.02  # as transformers' `initializer_range`: logits neither flat nor saturated

# Training text for the tokenizer: a few KB of plain English covering common words and
# punctuation, so everyday prompts tokenize into sensible pieces.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still tell a story.
Once upon a time there was a little town by the sea. Every morning the fishermen went out
in their boats, and every evening they came back with nets full of silver fish. The children
ran along the beach, looking for shells and watching the waves roll in.
In the middle of the town stood an old library. Its shelves held books about history,
science, music and art. People came to read, to learn and to talk about what they had read.
The librarian knew every book by heart and always had a good question for her visitors.
What is the weather like today? It is sunny and warm, with a light wind from the west.
Tomorrow it may rain, so remember to bring an umbrella when you leave the house.
Computers follow instructions step by step. A program is a list of such instructions,
written in a language the machine can understand. Good programs are simple, clear and tested.
When a server receives a request, it must answer quickly. If many requests arrive at once,
the server puts them in a queue and works through them in order, or by priority.
Some requests are urgent and need an answer within half a second; others can wait longer.
A language model reads a prompt and predicts the next word, then the next, one at a time.
The first word takes the longest, because the model must read the whole prompt first.
After that, each new word comes faster, as the model only looks at what it has just written.
Hello! How are you? I am fine, thank you. Can you help me with a question about my order?
Of course. Please tell me your name and the number of the order, and I will check it.
The meeting starts at nine o'clock on Monday. We will discuss the plan for the next quarter,
the budget for new machines, and the results of the last experiment.
Numbers: one, two, three, four, five, six, seven, eight, nine, ten, 1, 2, 3, 10, 100, 2024.
Days: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
Colours: red, orange, yellow, green, blue, purple, black, white and grey.
The cat sat on the mat and looked out of the window at the birds in the garden.
Water boils at one hundred degrees and freezes at zero. Ice is lighter than water.
The sun is a star. The earth goes around the sun once a year, and the moon goes around
the earth about once a month. At night we can see thousands of stars in a clear sky.
She opened the door, took off her coat and sat down by the fire with a cup of tea.
"Where have you been?" he asked. "Out walking," she said. "The hills are beautiful now."
Mathematics is the study of numbers, shapes and patterns. Two plus two equals four.
A good summary is short, accurate and easy to read. Write the main idea first.
Please translate this sentence into French. Please explain this idea in simple words.
The train leaves the station at half past eight and arrives in the city an hour later.
Farmers plant seeds in spring, care for the crops in summer and harvest them in autumn.
In winter the fields rest under the snow, and the farmers repair their tools and plan.
Thank you for your message. I will reply as soon as I can. Best wishes, and see you soon.
"""


def default_model_path() -> Path:
    """The default checkpoint's folder, created on first use; safe against concurrent creators
    (each builds in a private temp folder and the first atomic rename wins)."""
    target = env.cache_dir() / "models" / f"tiny-llama-{VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_default_model(staging, SEED)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # not a lost race: something else is wrong
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def write_default_model(folder: Path, seed: int) -> None:
    """Write the tokenizer, config and random weights into the existing `folder`."""
    tokenizer = _train_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        **SHAPE,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": SHAPE["max_position_embeddings"],
            "chat_template": CHAT_TEMPLATE,
        },
    )
    from safetensors.torch import save_file  # torch only when the model is first created

    save_file(random_weights(config, seed), str(folder / "model.safetensors"), {"format": "pt"})


def _train_tokenizer() -> HFTokenizer:
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    return tokenizer


def random_weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random Llama weights for `config` (a config.json dict); also what the weight-loading
    benchmark writes at a larger shape."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    q_size = config["num_attention_heads"] * head_dim
    kv_size = config["num_key_value_heads"] * head_dim

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * INIT_STD

    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        weights[prefix + "self_attn.q_proj.weight"] = normal(q_size, hidden)
        weights[prefix + "self_attn.k_proj.weight"] = normal(kv_size, hidden)
        weights[prefix + "self_attn.v_proj.weight"] = normal(kv_size, hidden)
        weights[prefix + "self_attn.o_proj.weight"] = normal(hidden, q_size)
        weights[prefix + "mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[prefix + "mlp.up_proj.weight"] = normal(inter, hidden)
        weights[prefix + "mlp.down_proj.weight"] = normal(hidden, inter)
        weights[prefix + "input_layernorm.weight"] = torch.ones(hidden)
        weights[prefix + "post_attention_layernorm.weight"] = torch.ones(hidden)
    weights["model.norm.weight"] = torch.ones(hidden)
    weights["lm_head.weight"] = normal(config["vocab_size"], hidden)
    return weights


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
