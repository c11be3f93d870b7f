"""Token sampling: greedy, temperature, top-k, top-p, per-request seeds.

Reproducibility: a seeded request's k-th output token depends only on its logits, its sampling
parameters and `(seed, k)`, never on the batch it ran in or on a preemption before it, because
its random draw comes from a generator seeded from `(seed, num_output_tokens)`. Unseeded
requests share the runner's generator.

Sampling uses the exponential race: `argmax(p / E)` with `E ~ Exp(1)` i.i.d. draws token `i`
with probability `p_i`, and every row draws its noise from its own generator, so a batch is
sampled with one vectorised argmax.
"""

from __future__ import annotations

import torch

from hyperflexis.core.sampling import SamplingParams

_MASK64 = (1 << 64) - 1


def request_seed(seed: int, num_output_tokens: int) -> int:
    """A 64-bit generator seed from `(seed, token index)` (splitmix64 mixing, so neighbouring
    indices give unrelated streams)."""
    z = (seed * 0x9E3779B97F4A7C15 + num_output_tokens + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Sampler:
    """Picks one token per logits row."""

    def __init__(self, seed: int) -> None:
        # Unseeded draws happen on the CPU, so the same seed gives the same stream on any device.
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        num_output_tokens: list[int],
    ) -> list[int]:
        """`logits` [rows, vocab]; one SamplingParams and output-token count per row."""
        if logits.shape[0] != len(params) or len(params) != len(num_output_tokens):
            raise ValueError("logits, params and num_output_tokens must have the same rows")
        greedy = [p.is_greedy for p in params]
        if all(greedy):
            return logits.argmax(dim=-1).tolist()
        tokens = logits.argmax(dim=-1)
        rows = [i for i, g in enumerate(greedy) if not g]
        picked = self._sample_rows(
            logits[rows].float(),
            [params[i] for i in rows],
            [num_output_tokens[i] for i in rows],
        )
        tokens[rows] = picked
        return tokens.tolist()

    def _sample_rows(
        self, logits: torch.Tensor, params: list[SamplingParams], counts: list[int]
    ) -> torch.Tensor:
        temperatures = torch.tensor([p.temperature for p in params], device=logits.device)
        probs = torch.softmax(logits / temperatures[:, None], dim=-1)
        if any(p.top_k is not None or p.top_p < 1.0 for p in params):
            probs = _top_k_top_p(probs, params)
        noise = torch.empty(probs.shape, dtype=torch.float32)
        unseeded = [i for i, p in enumerate(params) if p.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1]).exponential_(
                generator=self.generator
            )
        for i, (p, count) in enumerate(zip(params, counts, strict=True)):
            if p.seed is not None:
                generator = torch.Generator(device="cpu").manual_seed(request_seed(p.seed, count))
                noise[i].exponential_(generator=generator)
        # Exp(1) draws of exactly 0 would divide by zero; they are rare enough to clamp.
        noise.clamp_(min=1e-30)
        return (probs / noise.to(probs.device)).argmax(dim=-1)


def _top_k_top_p(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Zero the tokens outside each row's top-k and top-p sets (top-k first, as vLLM does)."""
    vocab = probs.shape[1]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=probs.device)
    top_k = torch.tensor([p.top_k or vocab for p in params], device=probs.device)
    keep = ranks[None, :] < top_k[:, None]
    sorted_probs = sorted_probs * keep
    # Keep a token while the mass before it is under top_p; the most likely token always stays.
    top_p = torch.tensor([p.top_p for p in params], device=probs.device)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep &= mass_before < top_p[:, None] * sorted_probs.sum(dim=-1, keepdim=True)
    keep[:, 0] = True
    filtered = torch.zeros_like(probs)
    return filtered.scatter_(1, order, sorted_probs * keep)
