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


def test_frequency_counts_occurrences_presence_does_not() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 3] = 2.5  # the favourite, already generated three times
    logits[:, 4] = 1.0  # generated once
    logits[:, 5] = 0.2
    context = [9, 9, 3, 3, 3, 4]  # prompt [9, 9], then four output tokens
    frequency = SamplingParams(temperature=0.0, frequency_penalty=1.0)
    presence = SamplingParams(temperature=0.0, presence_penalty=1.0)
    tokens = Sampler(0).sample(logits, [frequency, presence], [4, 4], [context, context])
    # frequency: 3 -> -0.5, 4 -> 0.0, so 5 wins; presence: 3 -> 1.5 still beats 4 -> 0.0.
    assert tokens == [5, 3]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.full((1, VOCAB), -5.0)
    logits[0, 3] = 2.0  # seen: 2.0 / 2 = 1.0
    logits[0, 4] = 1.5  # unseen, wins after the penalty
    logits[0, 6] = -0.1  # seen: -0.2, still below 4
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert Sampler(0).sample(logits, [params], [0], [[3, 6]]) == [4]


def test_min_tokens_masks_eos_and_stop_tokens_then_lets_them_through() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 1] = 9.0  # EOS
    logits[:, 2] = 8.0  # a stop token
    logits[:, 3] = 1.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2])
    sampler = Sampler(0, eos_token_ids=[1])
    assert sampler.sample(logits, [params, params], [1, 2], [[0], [0]]) == [3, 1]


def test_logprobs_are_of_the_raw_logits_whatever_was_sampled() -> None:
    from hyperflexis.engine.sampler import compute_logprobs

    logits = _logits(2)
    entries = compute_logprobs(logits, [7, 8], [2, None])
    raw = torch.log_softmax(logits, dim=-1)
    first = entries[0]
    assert first is not None and entries[1] is None
    assert first[7].logprob == pytest.approx(float(raw[0, 7]))
    assert first[7].rank == int((raw[0] > raw[0, 7]).sum()) + 1
    top_two = raw[0].topk(2).indices.tolist()
    assert {t for t, lp in first.items() if lp.rank <= 2} == set(top_two)
