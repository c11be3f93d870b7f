"""Sampler: greedy, seeded reproducibility independent of the batch, top-k/top-p filtering."""

from __future__ import annotations

import pytest
import torch

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.engine.sampler import Sampler, request_seed

VOCAB = 50


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def test_greedy_is_argmax() -> None:
    logits = _logits(6)
    tokens = Sampler(0).sample(logits, [SamplingParams(temperature=0.0)] * 6, [0] * 6)
    assert tokens == logits.argmax(dim=-1).tolist()


def test_seeded_sampling_is_reproducible_and_batch_independent() -> None:
    logits = _logits(5, seed=1)
    seeded = SamplingParams(temperature=1.0, seed=42)
    alone = Sampler(0).sample(logits[2:3], [seeded], [7])
    batch_params = [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=0.0),
        seeded,
        SamplingParams(temperature=1.3, seed=5),
        SamplingParams(temperature=1.0, top_k=3),
    ]
    for runner_seed in range(3):  # the runner's own generator must not matter either
        batch = Sampler(runner_seed).sample(logits, batch_params, [0, 1, 7, 2, 3])
        assert batch[2] == alone[0]


def test_seeded_tokens_vary_with_token_index() -> None:
    flat = torch.zeros(1, VOCAB)
    params = [SamplingParams(temperature=1.0, seed=3)]
    tokens = {Sampler(0).sample(flat, params, [k])[0] for k in range(30)}
    assert len(tokens) > 10
    assert request_seed(3, 0) != request_seed(3, 1) != request_seed(4, 0)


def test_unseeded_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    rows = 6000
    logits = probs.log().expand(rows, 3).contiguous()
    tokens = torch.tensor(Sampler(0).sample(logits, [SamplingParams()] * rows, [0] * rows))
    freq = torch.bincount(tokens, minlength=3).float() / rows
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=5.0, top_p=0.01),
        SamplingParams(temperature=2.0, top_k=4, top_p=0.001, seed=9),
    ],
)
def test_top_k_one_and_tiny_top_p_are_greedy(params: SamplingParams) -> None:
    logits = _logits(8, seed=2)
    tokens = Sampler(0).sample(logits, [params] * 8, list(range(8)))
    assert tokens == logits.argmax(dim=-1).tolist()


def test_top_k_keeps_only_the_k_most_likely() -> None:
    logits = torch.zeros(400, VOCAB)
    logits[:, 10] = logits[:, 20] = 0.5  # two favourites; the rest tie far below at 0
    logits[:, 30] = -0.1  # would be drawn often without top-k
    tokens = Sampler(1).sample(logits, [SamplingParams(top_k=2)] * 400, [0] * 400)
    assert set(tokens) == {10, 20}


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(500, 4).contiguous()
    tokens = Sampler(2).sample(logits, [SamplingParams(top_p=0.75)] * 500, [0] * 500)
    assert set(tokens) == {0, 1}


def test_mismatched_rows_raise() -> None:
    with pytest.raises(ValueError, match="same rows"):
        Sampler(0).sample(_logits(2), [SamplingParams()], [0])
