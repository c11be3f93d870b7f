"""The engine: one instance's step loop (`loop`, `factory`, `output_processor`, `step_profiler`)
and the only torch code in HyperFlexis (models, paged KV cache, runner, sampler, loader, tokenizer).

Names load lazily, so a process that only tokenises (the API server) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperflexis.engine.config import SUPPORTED_ARCHITECTURES, ModelConfig
    from hyperflexis.engine.default_model import default_model_path
    from hyperflexis.engine.kv_cache import KVCache, bytes_per_block
    from hyperflexis.engine.loader import load_model, parse_dtype
    from hyperflexis.engine.model_runner import ModelRunner
    from hyperflexis.engine.sampler import Sampler
    from hyperflexis.engine.tokenizer import IncrementalDetokenizer, Tokenizer

_MODULES = {
    "SUPPORTED_ARCHITECTURES": "config",
    "ModelConfig": "config",
    "default_model_path": "default_model",
    "KVCache": "kv_cache",
    "bytes_per_block": "kv_cache",
    "load_model": "loader",
    "parse_dtype": "loader",
    "ModelRunner": "model_runner",
    "Sampler": "sampler",
    "IncrementalDetokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
}

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "IncrementalDetokenizer",
    "KVCache",
    "ModelConfig",
    "ModelRunner",
    "Sampler",
    "Tokenizer",
    "bytes_per_block",
    "default_model_path",
    "load_model",
    "parse_dtype",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'hyperflexis.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hyperflexis.engine.{module}"), name)
