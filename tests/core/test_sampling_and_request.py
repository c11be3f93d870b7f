from __future__ import annotations

import pytest

from hyperflexis.core import SLO, FinishReason, Request, SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
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
