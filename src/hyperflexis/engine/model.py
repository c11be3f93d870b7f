"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2) in plain PyTorch over the paged KV cache.

Module and parameter names match Hugging Face's (`model.layers.N.self_attn.q_proj.weight`, ...)
so a checkpoint's state dict loads by name. The numerics follow transformers' reference
implementation (RMSNorm in float32, RoPE tables in float32 cast to the model dtype) so fp32
logits agree to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hyperflexis.engine.attention import StepBatch, paged_attention
from hyperflexis.engine.config import Llama3RopeScaling, ModelConfig
from hyperflexis.engine.kv_cache import KVCache

Device = torch.device | str | None


class Embedding(nn.Module):
    """Token embedding without random init (nn.Embedding's init on "meta" pulls in dynamo)."""

    def __init__(self, num_embeddings: int, dim: int, device: Device = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, device: Device = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32:  # one fused kernel; same arithmetic as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse RoPE frequencies [head_dim // 2] in float32, with llama3 scaling if configured."""
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.int64).float() / config.head_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_scaling is not None:
        inv_freq = _llama3_scale(inv_freq, config.rope_scaling)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, scaling: Llama3RopeScaling) -> torch.Tensor:
    # Long wavelengths are stretched by `factor`, short ones kept, the band between blended.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [tokens, heads, head_dim] by per-token angles in the rotate-half layout Hugging
    Face checkpoints use: x*cos + cat(-x2, x1)*sin, written as x*cos + cat(x2, x1)*[-sin; sin]
    (`rope_tables` gives the signed sin) to save a negation per layer; the result is identical."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int, device: Device = None) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        hidden, bias = config.hidden_size, config.qkv_bias
        self.q_proj = nn.Linear(hidden, q_size, bias=bias, device=device)
        self.k_proj = nn.Linear(hidden, kv_size, bias=bias, device=device)
        self.v_proj = nn.Linear(hidden, kv_size, bias=bias, device=device)
        self.o_proj = nn.Linear(q_size, hidden, bias=False, device=device)
        # One [q; k; v] matrix, set by `fuse`; the three projections become views into it.
        self.qkv_weight: torch.Tensor | None = None
        self.qkv_bias: torch.Tensor | None = None

    def fuse(self) -> None:
        """Concatenate the q/k/v weights into one matrix (one matmul per layer instead of
        three) and make the Hugging Face-named parameters views into it, so the memory is not
        doubled and loading by name still writes the fused copy."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.qkv_weight = _fuse_rows([p.weight for p in projections])
        if self.q_proj.bias is not None:
            self.qkv_bias = _fuse_rows([p.bias for p in projections if p.bias is not None])

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: StepBatch,
        kv_cache: KVCache,
    ) -> torch.Tensor:
        assert self.qkv_weight is not None, "call CausalLM.fuse_projections() after loading"
        num_tokens = x.shape[0]
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = F.linear(x, self.qkv_weight, self.qkv_bias)
        qkv = qkv.view(num_tokens, heads + 2 * kv_heads, self.head_dim)
        qk = apply_rope(qkv[:, : heads + kv_heads], cos, sin)  # q and k rotated together
        q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
        kv_cache.write(self.layer_index, k, v, batch.slot_mapping)
        out = paged_attention(q, k, v, kv_cache, self.layer_index, batch)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, device: Device = None) -> None:
        super().__init__()
        hidden, inter = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inter, bias=False, device=device)
        self.up_proj = nn.Linear(hidden, inter, bias=False, device=device)
        self.down_proj = nn.Linear(inter, hidden, bias=False, device=device)
        self.gate_up_weight: torch.Tensor | None = None  # [gate; up], set by `fuse`

    def fuse(self) -> None:
        self.gate_up_weight = _fuse_rows([self.gate_proj.weight, self.up_proj.weight])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.gate_up_weight is not None, "call CausalLM.fuse_projections() after loading"
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _fuse_rows(params: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate `params` along rows and re-point each at its slice of the result. Rows that
    already lie back to back in one storage (a peer's segment, `loader.mapped_model`) become a
    view of it, without a copy."""
    fused = _adjacent_rows(params)
    if fused is None:
        fused = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        rows = p.shape[0]
        p.data = fused[start : start + rows]
        start += rows
    return fused


def _adjacent_rows(params: list[torch.Tensor]) -> torch.Tensor | None:
    """One view over `params` when each starts where the previous ends in the same storage."""
    first = params[0].detach()
    storage = first.untyped_storage()
    end = first.data_ptr()
    for p in params:
        same_kind = p.dtype == first.dtype and p.shape[1:] == first.shape[1:]
        if not (same_kind and p.is_contiguous() and p.data_ptr() == end):
            return None
        if p.untyped_storage().data_ptr() != storage.data_ptr():
            return None
        end += p.numel() * p.element_size()
    rows = sum(p.shape[0] for p in params)
    view = torch.empty(0, dtype=first.dtype, device=first.device)
    shape = (rows, *first.shape[1:])
    return view.set_(
        storage, first.storage_offset(), shape, torch.empty(shape, device="meta").stride()
    )


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int, device: Device = None) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_index, device)
        self.mlp = MLP(config, device)
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, device)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: StepBatch,
        kv_cache: KVCache,
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, batch, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderStack(nn.Module):
    """Hugging Face's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig, device: Device = None) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, device)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, device) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device)


class CausalLM(nn.Module):
    """The decoder plus `lm_head`; `forward` returns hidden states, `compute_logits` logits.

    Build it on the "meta" device to skip random initialisation, then `to_empty` and load.
    """

    def __init__(self, config: ModelConfig, device: Device = None) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderStack(config, device)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device)
        self.tie_weights()
        # Not a parameter or buffer: it never comes from a checkpoint; the loader moves it.
        self.inv_freq = rope_inv_freq(config)

    def fuse_projections(self) -> None:
        """Fuse q/k/v and gate/up weights (see `Attention.fuse`); call once after loading."""
        for layer in self.model.layers:
            assert isinstance(layer, DecoderLayer)
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos and signed sin (see `apply_rope`) [tokens, 1, head_dim] for `positions`, computed
        in float32 then cast, as transformers does."""
        inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None, None] * inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)

    def forward(
        self, batch: StepBatch, kv_cache: KVCache, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run every layer over the batch (writing its K/V to the cache) and return final-norm
        hidden states of `rows` (all rows when None). The final norm is per token, so rows that
        produce no logits skip it."""
        h = self.model.embed_tokens(batch.input_ids)
        cos, sin = self.rope_tables(batch.positions, h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin, batch, kv_cache)
        return self.model.norm(h if rows is None else h[rows])

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
