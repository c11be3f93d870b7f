"""The analytic latency model: a roofline from a hardware spec and a model spec.

One step costs the larger of its compute time and its memory time (weights plus KV read and
written), plus a fixed per-step overhead, plus tensor-parallel all-reduces, which run between
layers and so are not hidden behind either. It is for the accelerators we cannot profile; a
profiled model replaces it where we can.
"""

from __future__ import annotations

from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.chunks import largest_root, refine_chunk
from hyperflexis.perf.specs import HardwareSpec, ModelSpec


class AnalyticCostModel:
    """Roofline step time of `model` on `hardware`. Monotone non-decreasing in every feature:
    each term is a non-negative multiple of a feature, and `max` keeps that."""

    __slots__ = (
        "_allreduce_s_per_token",
        "_attn_s_per_token2",
        "_compute_s_per_token",
        "_fixed_s",
        "_kv_s_per_token",
        "_weights_s",
        "hardware",
        "model",
    )

    def __init__(self, hardware: HardwareSpec, model: ModelSpec) -> None:
        self.hardware = hardware
        self.model = model
        tp = model.tensor_parallel
        flops_s = hardware.peak_flops * hardware.flops_efficiency
        bytes_s = hardware.memory_bandwidth_bytes_s * hardware.bandwidth_efficiency
        # Dense layers: 2 FLOPs per parameter per token. Attention: QK^T and PV, 2 FLOPs each per
        # (query, key) pair per head dimension, hence 4 * heads * head_dim per pair per layer.
        self._compute_s_per_token = 2 * model.num_params / tp / flops_s
        self._attn_s_per_token2 = (
            4 * model.num_layers * model.num_heads * model.head_dim / tp / flops_s
        )
        self._weights_s = model.weight_bytes_per_gpu / bytes_s
        self._kv_s_per_token = model.kv_bytes_per_token_per_gpu / bytes_s
        fixed_s = hardware.step_overhead_s
        allreduce_s_per_token = 0.0
        if tp > 1:
            # Two all-reduces per layer (after attention, after the MLP) of one hidden vector per
            # token; a ring moves 2(tp-1)/tp of the message over each link.
            num_allreduces = 2 * model.num_layers
            ring_factor = 2 * (tp - 1) / tp
            activation_bytes = model.hidden_size * model.dtype_bytes
            fixed_s += num_allreduces * hardware.tp_latency_s
            allreduce_s_per_token = (
                num_allreduces * ring_factor * activation_bytes / hardware.tp_bandwidth_bytes_s
            )
        self._fixed_s = fixed_s
        self._allreduce_s_per_token = allreduce_s_per_token

    def __repr__(self) -> str:
        return f"AnalyticCostModel({self.hardware.name!r}, {self.model.name!r})"

    def predict(self, features: StepFeatures) -> float:
        num_tokens = features.num_prefill_tokens + features.num_decodes
        compute_s = (
            num_tokens * self._compute_s_per_token
            + (features.prefill_attn_tokens2 + features.decode_ctx_tokens) * self._attn_s_per_token2
        )
        # KV read by attention (prefill chunks also read their own new tokens) and written.
        num_kv_tokens = features.prefill_ctx_tokens + features.decode_ctx_tokens + num_tokens
        memory_s = self._weights_s + num_kv_tokens * self._kv_s_per_token
        roofline_s = compute_s if compute_s > memory_s else memory_s
        return roofline_s + self._fixed_s + num_tokens * self._allreduce_s_per_token

    def roofline_parts(self, features: StepFeatures) -> tuple[float, float, float]:
        """`predict`'s terms apart: compute time, memory time, and the time hidden behind
        neither (overhead, all-reduces); `predict` is the larger of the first two plus the third
        (a test holds them equal; `predict` keeps them inline, it is the simulator's hot path).
        Each is additive over batches, so a fluid bound (`sim.bound`) can sum them."""
        num_tokens = features.num_prefill_tokens + features.num_decodes
        compute_s = (
            num_tokens * self._compute_s_per_token
            + (features.prefill_attn_tokens2 + features.decode_ctx_tokens) * self._attn_s_per_token2
        )
        # KV read by attention (prefill chunks also read their own new tokens) and written.
        num_kv_tokens = features.prefill_ctx_tokens + features.decode_ctx_tokens + num_tokens
        memory_s = self._weights_s + num_kv_tokens * self._kv_s_per_token
        return compute_s, memory_s, self._fixed_s + num_tokens * self._allreduce_s_per_token

    def max_prefill_tokens(
        self, features_base: StepFeatures, ctx_before: int, budget_s: float, max_tokens: int
    ) -> int:
        """The largest chunk (<= max_tokens) at `ctx_before` that keeps the step within
        `budget_s`; the same answer as `perf.base.largest_chunk`, from two quadratic roots (the
        step fits iff both its compute side and its memory side fit)."""
        f = features_base
        num_tokens = f.num_prefill_tokens + f.num_decodes
        other_s = self._fixed_s + num_tokens * self._allreduce_s_per_token
        compute_s = (
            num_tokens * self._compute_s_per_token
            + (f.prefill_attn_tokens2 + f.decode_ctx_tokens) * self._attn_s_per_token2
        )
        num_kv_tokens = f.prefill_ctx_tokens + f.decode_ctx_tokens + num_tokens
        memory_s = self._weights_s + num_kv_tokens * self._kv_s_per_token
        # A chunk of n tokens adds n*(ctx + n/2) attention pairs, reads ctx + n KV tokens and
        # writes n.
        attn = self._attn_s_per_token2
        compute_n = largest_root(
            attn / 2,
            self._compute_s_per_token + attn * ctx_before + self._allreduce_s_per_token,
            budget_s - other_s - compute_s,
        )
        memory_n = largest_root(
            0.0,
            2 * self._kv_s_per_token + self._allreduce_s_per_token,
            budget_s - other_s - memory_s - ctx_before * self._kv_s_per_token,
        )
        estimate = min(compute_n, memory_n)
        return refine_chunk(self, features_base, ctx_before, budget_s, max_tokens, estimate)
