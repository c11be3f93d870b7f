"""`ModelConfig`: the architecture facts the engine needs, parsed from a Hugging Face
`config.json`. Both the transformers 4 layout (`rope_theta`, `rope_scaling`, `torch_dtype`) and
the transformers 5 layout (`rope_parameters`, `dtype`) are read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True, slots=True)
class Llama3RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling (the only scaling type supported)."""

    factor: float  # how much the low frequencies are stretched
    low_freq_factor: float  # wavelengths above original/low_freq_factor are fully scaled
    high_freq_factor: float  # wavelengths below original/high_freq_factor are left alone
    original_max_position_embeddings: int  # the context the model was pre-trained with


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A Llama-family decoder's shape and numerics.

    Mistral's sliding window is not implemented: when it is smaller than
    `max_position_embeddings`, contexts are capped at the window (see `max_model_len`), inside
    which sliding-window attention and full attention are the same computation.
    """

    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int  # rows of the embedding and of lm_head
    hidden_size: int  # model width
    intermediate_size: int  # SwiGLU MLP width
    num_layers: int  # decoder layers
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (< num_heads means grouped-query attention)
    head_dim: int  # per-head width (explicit in config.json or hidden_size // num_heads)
    rope_theta: float  # RoPE base
    rope_scaling: Llama3RopeScaling | None  # None: plain RoPE
    rms_norm_eps: float  # RMSNorm epsilon
    max_position_embeddings: int  # longest context the checkpoint claims
    tie_word_embeddings: bool  # lm_head shares the embedding matrix
    qkv_bias: bool  # q/k/v projections have a bias (Qwen2)
    eos_token_ids: tuple[int, ...]  # end-of-sequence ids (config may give an int or a list)
    bos_token_id: int | None  # beginning-of-sequence id, if the model has one
    torch_dtype: str | None  # the checkpoint's dtype name, e.g. "bfloat16"
    sliding_window: int | None = None  # Mistral's attention window, None when unused

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config field {name!r} must be an int >= 1, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"config field 'num_key_value_heads' ({self.num_kv_heads}) must divide "
                f"'num_attention_heads' ({self.num_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"config field 'head_dim' must be even for RoPE, got {self.head_dim}")

    @property
    def max_model_len(self) -> int:
        """Longest context the engine serves: the window caps it when sliding attention is on."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        architectures = raw.get("architectures") or []
        if not isinstance(architectures, list) or len(architectures) != 1:
            raise ValueError(
                f"config field 'architectures' must list one architecture, got {architectures!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        architecture = architectures[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        hidden_size = _required(raw, "hidden_size")
        num_heads = _required(raw, "num_attention_heads")
        head_dim = raw.get("head_dim") or hidden_size // num_heads
        rope_theta, rope_scaling = _parse_rope(raw)
        sliding_window = raw.get("sliding_window")
        if architecture == "Qwen2ForCausalLM" and not raw.get("use_sliding_window", False):
            sliding_window = None  # Qwen2 configs carry a window they do not use
        return cls(
            architecture=architecture,
            vocab_size=_required(raw, "vocab_size"),
            hidden_size=hidden_size,
            intermediate_size=_required(raw, "intermediate_size"),
            num_layers=_required(raw, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=_required(raw, "max_position_embeddings"),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=architecture == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
            eos_token_ids=_token_ids(raw.get("eos_token_id"), "eos_token_id"),
            bos_token_id=raw.get("bos_token_id"),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            sliding_window=sliding_window,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(raw)


def resolve_dtype_name(dtype: str, model_dir: Path, device: str) -> str:
    """vLLM's `--dtype auto`: the checkpoint's dtype on a GPU (float16 for a float32
    checkpoint, as vLLM picks), float32 on the CPU; any other name is returned as given."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cuda"):
        return "float32"
    stored = ModelConfig.from_file(model_dir / "config.json").torch_dtype
    if stored is None or stored in ("float32", "fp32"):
        return "float16"
    return stored


def _required(raw: dict[str, Any], name: str) -> Any:
    if name not in raw or raw[name] is None:
        raise ValueError(f"config.json lacks required field {name!r}")
    return raw[name]


def _token_ids(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"config field {name!r} must be an int or a list of ints, got {value!r}")


def _parse_rope(raw: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    # transformers 5 folds theta and scaling into `rope_parameters`; 4.x keeps them apart.
    params = raw.get("rope_parameters") or {}
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling") or params
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(
            f"unsupported config field 'rope_scaling' type {rope_type!r}; supported: llama3"
        )
    return theta, Llama3RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )
