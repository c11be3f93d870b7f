"""Constants and the record type shared by the engine fixtures and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_SIZE = 96
MAX_POSITIONS = 256
COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_POSITIONS,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the saved folder
    reference: torch.nn.Module  # the transformers model it was saved from (fp32, eval)
