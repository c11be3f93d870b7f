"""Hardware and model specs for the analytic latency model, the simulator and the scaler's costs.

Figures are public: vendor datasheets for accelerators, each model's `config.json` on the Hugging
Face Hub for models. Registry names are the lower-case names the CLI accepts; unknown names fail
loudly with the list of known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 2**30


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """One accelerator (a GPU or NPU) as the latency and cost models see it."""

    name: str  # registry name, e.g. "h100-sxm"
    peak_flops: float  # dense bf16/fp16 FLOP/s (no sparsity)
    memory_bandwidth_bytes_s: float  # HBM bandwidth, datasheet peak
    memory_bytes: int  # HBM capacity
    step_overhead_s: float  # per engine step: scheduling, launches, sampling; not hidden by the GPU
    interconnect_bandwidth_bytes_s: (
        float  # per accelerator, between instances (KV transfer): IB/RoCE
    )
    interconnect_latency_s: float  # per transfer over that network
    d2d_weight_bandwidth_bytes_s: float  # weight copy from a live peer on the node (NVLink/HCCS)
    disk_bandwidth_bytes_s: float  # effective weight load from local NVMe (read + host-to-device)
    price_per_hour: float  # USD per accelerator-hour, on-demand list price (source in the registry)
    flops_efficiency: float = 0.6  # achievable fraction of peak_flops in large GEMMs (MFU)
    bandwidth_efficiency: float = 0.8  # achievable fraction of memory bandwidth (MBU)
    tp_bandwidth_bytes_s: float = 300e9  # intra-node all-reduce bus bandwidth (tensor parallelism)
    tp_latency_s: float = 10e-6  # fixed cost of one small all-reduce

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "name" and not value > 0:
                raise ValueError(f"invalid hardware field {field.name!r}: must be > 0, got {value}")
        for field_name in ("flops_efficiency", "bandwidth_efficiency"):
            if getattr(self, field_name) > 1:
                raise ValueError(f"invalid hardware field {field_name!r}: must be <= 1")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A dense decoder-only transformer, sharded `tensor_parallel` ways."""

    name: str  # registry name, e.g. "llama-3.1-8b"
    num_params: int  # all parameters, embeddings and LM head included
    num_layers: int
    hidden_size: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (grouped-query attention)
    head_dim: int
    intermediate_size: int  # MLP width
    vocab_size: int
    dtype_bytes: int = 2  # bytes per weight and per KV element (bf16)
    tensor_parallel: int = 1  # accelerators one instance spans

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "name" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"invalid model field {field.name!r}: must be an int >= 1")
        if self.num_heads % self.tensor_parallel:
            raise ValueError(
                f"invalid model field 'tensor_parallel': {self.tensor_parallel} does not divide "
                f"num_heads={self.num_heads}"
            )

    @property
    def weight_bytes(self) -> int:
        """All weights of one replica."""
        return self.num_params * self.dtype_bytes

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.weight_bytes / self.tensor_parallel

    @property
    def kv_bytes_per_token(self) -> int:
        """Key and value bytes one token adds to the cache, all layers, whole replica."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        # KV heads are split across the TP ranks; with fewer KV heads than ranks each rank keeps
        # one replicated head, as vLLM does.
        kv_heads_per_gpu = max(self.num_kv_heads / self.tensor_parallel, 1.0)
        return 2 * self.num_layers * kv_heads_per_gpu * self.head_dim * self.dtype_bytes

    def with_tensor_parallel(self, tensor_parallel: int) -> ModelSpec:
        return dataclasses.replace(self, tensor_parallel=tensor_parallel)

    @classmethod
    def from_hf_config(
        cls,
        config: Mapping[str, Any],
        *,
        name: str | None = None,
        tensor_parallel: int = 1,
        dtype_bytes: int | None = None,
    ) -> ModelSpec:
        """A spec from a Hugging Face `config.json` dict (Llama, Qwen2, Mistral style). The
        parameter count is computed from the shapes, so it matches the checkpoint."""

        def get(key: str) -> int:
            if key not in config:
                raise ValueError(f"model config is missing field {key!r}")
            value = config[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"model config field {key!r} must be an int, got {value!r}")
            return value

        hidden = get("hidden_size")
        num_layers = get("num_hidden_layers")
        num_heads = get("num_attention_heads")
        num_kv_heads = get("num_key_value_heads") if "num_key_value_heads" in config else num_heads
        head_dim = get("head_dim") if config.get("head_dim") is not None else hidden // num_heads
        intermediate = get("intermediate_size")
        vocab = get("vocab_size")
        # Qwen2 has q/k/v biases without saying so in its config; Llama says attention_bias.
        has_qkv_bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
        q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
        attention = hidden * (q_dim + 2 * kv_dim) + q_dim * hidden
        if has_qkv_bias:
            attention += q_dim + 2 * kv_dim
        per_layer = attention + 3 * hidden * intermediate + 2 * hidden  # gate/up/down + 2 norms
        embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
        num_params = num_layers * per_layer + embeddings + hidden  # + final norm
        if dtype_bytes is None:
            dtype_name = str(config.get("torch_dtype", config.get("dtype", "bfloat16")))
            dtype_bytes = _DTYPE_BYTES.get(dtype_name.removeprefix("torch."))
            if dtype_bytes is None:
                raise ValueError(f"model config field 'torch_dtype': unknown dtype {dtype_name!r}")
        return cls(
            name=name or str(config.get("_name_or_path") or config.get("model_type") or "model"),
            num_params=num_params,
            num_layers=num_layers,
            hidden_size=hidden,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=vocab,
            dtype_bytes=dtype_bytes,
            tensor_parallel=tensor_parallel,
        )


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def kv_cache_tokens(hardware: HardwareSpec, model: ModelSpec, memory_fraction: float = 0.9) -> int:
    """Tokens of KV cache one instance holds: the memory left on each accelerator after its weight
    shard, at `memory_fraction` of HBM (the rest is activations and the runtime, as vLLM's
    `gpu_memory_utilization`). 0 when the weights do not fit."""
    if not 0 < memory_fraction <= 1:
        raise ValueError("invalid 'memory_fraction': must be in (0, 1]")
    free = hardware.memory_bytes * memory_fraction - model.weight_bytes_per_gpu
    return max(int(free // model.kv_bytes_per_token_per_gpu), 0)


# -- hardware registry ------------------------------------------------------------------------
#
# Datasheets: NVIDIA A100 (80GB SXM: 312 TFLOPS bf16 dense, 2,039 GB/s HBM2e, NVLink 600 GB/s),
# NVIDIA H100 (SXM5: 989 TFLOPS bf16 dense, 3.35 TB/s HBM3, 80 GB, NVLink 900 GB/s), NVIDIA H200
# (SXM: same Hopper compute as H100, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s); Huawei Ascend 910B
# as widely reported (~320 TFLOPS fp16, 64 GB HBM2e at ~1.6 TB/s, HCCS 392 GB/s per NPU).
# Inter-instance network: one NIC per accelerator as in DGX A100 (HDR 200 Gb/s), DGX H100/H200
# (NDR 400 Gb/s ConnectX-7) and Atlas 800T A2 (200 GbE RoCE) nodes.
# D2D weight copy: achievable unidirectional peer-to-peer copy over NVLink/HCCS (below the
# datasheet's bidirectional total). All-reduce bus bandwidth: achievable NCCL/HCCL busbw, about
# half the bidirectional NVLink figure. Disk: effective safetensors load from local NVMe, including
# the host-to-device copy, not the drive's raw sequential read.
# Prices (USD per accelerator-hour, on demand): A100 80GB $2.74 and H100 SXM $3.24 (Ori public
# cloud, blog.ori.co, "Benchmarking Llama 3.1 8B Instruct on Nvidia H100 and A100 chips with
# vLLM"); H200 $4.54 (Spheron on-demand, 2026-03-17, spheron.network "NVIDIA H200 vs B200 vs
# GB200"). The 910B has no public on-demand list price we could cite; it is set to the A100's, the
# part it is usually compared with.
# Efficiencies and step overheads are ours: MFU 0.6 / MBU 0.8 is typical of vLLM on NVIDIA parts,
# with ~1 ms of per-step CPU work; NPUs run lower on both.

_HARDWARE: dict[str, HardwareSpec] = {
    spec.name: spec
    for spec in (
        HardwareSpec(
            name="a100-80gb",
            peak_flops=312e12,
            memory_bandwidth_bytes_s=2.039e12,
            memory_bytes=80 * GIB,
            step_overhead_s=1.2e-3,
            interconnect_bandwidth_bytes_s=25e9,
            interconnect_latency_s=10e-6,
            d2d_weight_bandwidth_bytes_s=250e9,
            disk_bandwidth_bytes_s=2e9,
            price_per_hour=2.74,
            flops_efficiency=0.6,
            bandwidth_efficiency=0.8,
            tp_bandwidth_bytes_s=230e9,
            tp_latency_s=10e-6,
        ),
        HardwareSpec(
            name="h100-sxm",
            peak_flops=989e12,
            memory_bandwidth_bytes_s=3.35e12,
            memory_bytes=80 * GIB,
            step_overhead_s=1.0e-3,
            interconnect_bandwidth_bytes_s=50e9,
            interconnect_latency_s=10e-6,
            d2d_weight_bandwidth_bytes_s=370e9,
            disk_bandwidth_bytes_s=3e9,
            price_per_hour=3.24,
            flops_efficiency=0.6,
            bandwidth_efficiency=0.8,
            tp_bandwidth_bytes_s=360e9,
            tp_latency_s=8e-6,
        ),
        HardwareSpec(
            name="h200",
            peak_flops=989e12,
            memory_bandwidth_bytes_s=4.8e12,
            memory_bytes=141 * 10**9,
            step_overhead_s=1.0e-3,
            interconnect_bandwidth_bytes_s=50e9,
            interconnect_latency_s=10e-6,
            d2d_weight_bandwidth_bytes_s=370e9,
            disk_bandwidth_bytes_s=3e9,
            price_per_hour=4.54,
            flops_efficiency=0.6,
            bandwidth_efficiency=0.8,
            tp_bandwidth_bytes_s=360e9,
            tp_latency_s=8e-6,
        ),
        HardwareSpec(
            name="ascend-910b",
            peak_flops=320e12,
            memory_bandwidth_bytes_s=1.6e12,
            memory_bytes=64 * GIB,
            step_overhead_s=2.0e-3,
            interconnect_bandwidth_bytes_s=25e9,
            interconnect_latency_s=15e-6,
            d2d_weight_bandwidth_bytes_s=150e9,
            disk_bandwidth_bytes_s=2e9,
            price_per_hour=2.74,
            flops_efficiency=0.5,
            bandwidth_efficiency=0.7,
            tp_bandwidth_bytes_s=150e9,
            tp_latency_s=20e-6,
        ),
    )
}
_HARDWARE_ALIASES = {"h100": "h100-sxm"}


# -- model registry ---------------------------------------------------------------------------
#
# The shapes of each model's config.json on the Hugging Face Hub (meta-llama/Llama-3.1-8B,
# Qwen/Qwen2.5-14B, Qwen/Qwen2.5-32B, meta-llama/Llama-3.1-70B). Parameter counts follow from
# them: 8.03B, 14.77B, 32.76B and 70.55B, against the published 8.03B, 14.7B, 32.5B and 70.6B.


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": intermediate,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def _qwen25(layers: int, intermediate: int) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "hidden_size": 5120,
        "num_hidden_layers": layers,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "intermediate_size": intermediate,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec.from_hf_config(_llama(4096, 32, 32, 14336), name="llama-3.1-8b"),
        ModelSpec.from_hf_config(_qwen25(48, 13824), name="qwen2.5-14b"),
        ModelSpec.from_hf_config(_qwen25(64, 27648), name="qwen2.5-32b"),
        # 141 GB of bf16 weights: served on 4 accelerators by default.
        ModelSpec.from_hf_config(
            _llama(8192, 80, 64, 28672), name="llama-3.1-70b", tensor_parallel=4
        ),
    )
}


def hardware_names() -> list[str]:
    """Registry names (aliases excluded)."""
    return sorted(_HARDWARE)


def model_names() -> list[str]:
    return sorted(_MODELS)


def hardware_spec(name: str) -> HardwareSpec:
    key = name.strip().lower()
    key = _HARDWARE_ALIASES.get(key, key)
    if key not in _HARDWARE:
        known = sorted([*_HARDWARE, *_HARDWARE_ALIASES])
        raise ValueError(f"unknown hardware {name!r}; known: {', '.join(known)}")
    return _HARDWARE[key]


def model_spec(name: str, tensor_parallel: int | None = None) -> ModelSpec:
    """The registered model; `tensor_parallel` overrides its default sharding."""
    key = name.strip().lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    spec = _MODELS[key]
    return spec if tensor_parallel is None else spec.with_tensor_parallel(tensor_parallel)
