"""Token sampling: logit processing (allowed tokens, min_tokens, logit_bias, the three
penalties), then greedy or temperature, min-p, top-k, top-p, with per-request seeds; and the
logprobs of the raw distribution.

Order as in vLLM v1: the processors and penalties change the logits greedy decoding reads too;
temperature and the filters apply to sampled rows only. Logprobs are of the model's raw logits
(vLLM's default `raw_logprobs`), so they say what the model predicted, not what was sampled from.

Reproducibility: a seeded request's k-th output token depends only on its logits, its sampling
parameters and `(seed, k)`, never on the batch it ran in or on a preemption before it, because
its random draw comes from a generator seeded from `(seed, num_output_tokens)`. Unseeded
requests share the runner's generator.

Sampling uses the exponential race: `argmax(p / E)` with `E ~ Exp(1)` i.i.d. draws token `i`
with probability `p_i`, and every row draws its noise from its own generator, so a batch is
sampled with one vectorised argmax.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from hyperflexis.core.outputs import Logprob
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

    def __init__(self, seed: int, eos_token_ids: Collection[int] = ()) -> None:
        # Unseeded draws happen on the CPU, so the same seed gives the same stream on any device.
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.eos_token_ids = sorted(eos_token_ids)  # masked until a request's min_tokens

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        num_output_tokens: list[int],
        contexts: Sequence[Sequence[int] | None] | None = None,
    ) -> list[int]:
        """`logits` [rows, vocab]; one SamplingParams and output-token count per row, and (for
        the penalties) each row's prompt and output tokens so far."""
        if logits.shape[0] != len(params) or len(params) != len(num_output_tokens):
            raise ValueError("logits, params and num_output_tokens must have the same rows")
        if any(_needs_processing(p, n) for p, n in zip(params, num_output_tokens, strict=True)):
            logits = self._process(logits.float(), params, num_output_tokens, contexts)
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

    def _process(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        counts: list[int],
        contexts: Sequence[Sequence[int] | None] | None,
    ) -> torch.Tensor:
        logits = logits.clone()
        for i, (p, count) in enumerate(zip(params, counts, strict=True)):
            if not _needs_processing(p, count):
                continue
            row = logits[i]
            if p.allowed_token_ids is not None:
                allowed = torch.full_like(row, -torch.inf)
                allowed[p.allowed_token_ids] = 0.0
                row += allowed
            if count < p.min_tokens and (self.eos_token_ids or p.stop_token_ids):
                row[[*self.eos_token_ids, *p.stop_token_ids]] = -torch.inf
            if p.logit_bias:
                row[list(p.logit_bias)] += torch.tensor(
                    list(p.logit_bias.values()), device=row.device
                )
            if p.has_penalties:
                context = None if contexts is None else contexts[i]
                if context is None:
                    raise ValueError("penalties need the row's prompt and output tokens")
                _apply_penalties(row, p, context, count)
        return logits

    def _sample_rows(
        self, logits: torch.Tensor, params: list[SamplingParams], counts: list[int]
    ) -> torch.Tensor:
        temperatures = torch.tensor([p.temperature for p in params], device=logits.device)
        probs = torch.softmax(logits / temperatures[:, None], dim=-1)
        if any(p.min_p > 0.0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=logits.device)
            top = probs.max(dim=-1, keepdim=True).values
            probs = probs * (probs >= min_p[:, None] * top)
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


def compute_logprobs(
    logits: torch.Tensor, token_ids: list[int], num_top: list[int | None]
) -> list[dict[int, Logprob] | None]:
    """Per row with `num_top` set: the sampled token's and the `num_top` most likely tokens'
    logprobs under the raw logits, with their 1-based ranks (vLLM's shape)."""
    rows = [i for i, k in enumerate(num_top) if k is not None]
    result: list[dict[int, Logprob] | None] = [None] * len(token_ids)
    if not rows:
        return result
    logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
    most = max(num_top[i] or 0 for i in rows)
    top_values, top_ids = logprobs.topk(most, dim=-1) if most else (None, None)
    sampled = torch.tensor([token_ids[i] for i in rows], device=logprobs.device)
    sampled_lp = logprobs.gather(1, sampled[:, None])[:, 0]
    # Rank: 1 + tokens strictly more likely than the sampled one.
    ranks = (logprobs > sampled_lp[:, None]).sum(dim=-1) + 1
    for j, i in enumerate(rows):
        entry = {token_ids[i]: Logprob(float(sampled_lp[j]), int(ranks[j]))}
        for rank in range(num_top[i] or 0):
            assert top_ids is not None and top_values is not None
            token = int(top_ids[j, rank])
            entry.setdefault(token, Logprob(float(top_values[j, rank]), rank + 1))
        result[i] = entry
    return result


def _needs_processing(p: SamplingParams, num_output_tokens: int) -> bool:
    return (
        p.has_penalties
        or bool(p.logit_bias)
        or p.allowed_token_ids is not None
        or num_output_tokens < p.min_tokens
    )


def _apply_penalties(
    row: torch.Tensor, p: SamplingParams, context: Sequence[int], num_output_tokens: int
) -> None:
    """Repetition over prompt and output; frequency and presence over the output only."""
    vocab = row.shape[0]
    ids = torch.tensor(list(context), dtype=torch.long, device=row.device)
    if p.repetition_penalty != 1.0:
        seen = torch.zeros(vocab, dtype=torch.bool, device=row.device)
        seen[ids] = True
        penalised = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
        row.copy_(torch.where(seen, penalised, row))
    output = ids[len(ids) - num_output_tokens :] if num_output_tokens else ids[:0]
    counts = torch.bincount(output, minlength=vocab)[:vocab].to(row.dtype)
    row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)


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
