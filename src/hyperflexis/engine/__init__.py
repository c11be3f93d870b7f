"""The engine: the only torch code in HyperFlexis (models, paged KV cache, runner, sampler,
loader, tokenizer)."""

from hyperflexis.engine.config import SUPPORTED_ARCHITECTURES, ModelConfig
from hyperflexis.engine.default_model import default_model_path
from hyperflexis.engine.kv_cache import KVCache, bytes_per_block
from hyperflexis.engine.loader import load_model, parse_dtype
from hyperflexis.engine.model_runner import ModelRunner
from hyperflexis.engine.sampler import Sampler
from hyperflexis.engine.tokenizer import IncrementalDetokenizer, Tokenizer

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
