from __future__ import annotations

import pytest

from hyperflexis.core import SLO, FinishReason, Request, SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"n": 0}, "n"),
        ({"n": 2, "best_of": 3}, "best_of"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"logprobs": 21}, "logprobs"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"logit_bias": {3: 101.0}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"output_kind": "delta"}, "output_kind"),
        ({"guided_decoding": {"json": {}}}, "guided_decoding"),
        ({"bad_words": ["x"]}, "bad_words"),
        ({"detokenize": False}, "detokenize"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"max_tokens": True}, "max_tokens"),
    ],
)
def test_invalid_sampling_values_name_the_parameter(kwargs: dict, name: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=f"'{name}'"):
        SamplingParams(**kwargs)


def test_vllm_positional_order_and_spellings() -> None:
    params = SamplingParams(3, None, 0.5, 0.25, 1.2, 0.7, 0.9, 5, 0.1, 42)
    assert (params.n, params.presence_penalty, params.frequency_penalty) == (3, 0.5, 0.25)
    assert (params.repetition_penalty, params.temperature, params.top_p) == (1.2, 0.7, 0.9)
    assert (params.top_k, params.min_p, params.seed) == (5, 0.1, 42)
    assert SamplingParams(top_k=0).top_k is None and SamplingParams(top_k=-1).top_k is None
    assert SamplingParams(stop=None, stop_token_ids=None).stop == []
    assert SamplingParams(logit_bias={"7": 2.0}).logit_bias == {7: 2.0}  # JSON keys


def test_samples_derive_their_seeds() -> None:
    params = SamplingParams(n=3, seed=10, temperature=1.0)
    assert [params.for_sample(i).seed for i in range(3)] == [10, 11, 12]
    assert params.for_sample(2).n == 1
    assert SamplingParams(n=2).for_sample(1).seed is None


def test_stop_string_becomes_list() -> None:
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams(temperature=0).is_greedy


def test_request_deadlines_and_attainment() -> None:
    req = Request("r", [1, 2, 3], SamplingParams(max_tokens=3), SLO(1.0, 0.1), arrival_s=10.0)
    assert req.next_token_deadline_s == 11.0
    req.append_token(5, 10.5)
    assert req.next_token_deadline_s == pytest.approx(10.6)  # cumulative: first + 1 * tpot
    req.append_tokens(6, 2, 10.8)  # two at once (the simulator's decode fast-forward)
    assert req.next_token_deadline_s == pytest.approx(10.8)
    assert req.last_token_s == 10.8
    assert req.check_stop() is FinishReason.LENGTH
    req.finish(FinishReason.LENGTH, 10.8)
    assert req.ttft_s == pytest.approx(0.5)
    assert req.tpot_s == pytest.approx(0.15)
    assert not req.attained  # mean TPOT 0.15 > 0.1


def test_eos_and_stop_tokens() -> None:
    req = Request("r", [1], SamplingParams(stop_token_ids=[9]), eos_token_id=2)
    req.append_token(9, 0.0)
    assert req.check_stop() is FinishReason.STOP
    eos = Request("e", [1], SamplingParams(ignore_eos=True), eos_token_id=2)
    eos.append_token(2, 0.0)
    assert eos.check_stop() is None


def test_a_request_is_decoding_only_with_its_first_token_and_one_token_to_compute() -> None:
    req = Request("r", [1, 2, 3], SamplingParams(max_tokens=4))
    assert not req.is_decoding  # waiting with its whole prompt to compute
    req.num_computed_tokens = 2
    assert not req.is_decoding  # the prompt's last token is still a prefill
    req.num_computed_tokens = 3
    req.append_token(5, 1.0)
    assert req.is_decoding  # the first token is out; only it is to compute
    req.num_computed_tokens = 0  # preempted: it recomputes prompt and output first
    assert not req.is_decoding
    decode_role = Request("d", [1, 2, 3], SamplingParams(max_tokens=4))
    decode_role.num_computed_tokens = 3  # KV computed on a prefill instance, no token yet
    assert not decode_role.is_decoding
