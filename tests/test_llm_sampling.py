"""Each sampling parameter changes generation as specified, end to end through `LLM` on the tiny
random Llama; logprobs match transformers' log-softmax; vLLM's constructor names."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperflexis import LLM, SamplingParams
from tests.conftest import TINY_EOS_ID

PROMPT = [5, 6, 7]  # greedy repeats tokens from here (108 three times, then 57 five times)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(tiny_llama_dir)


def _tokens(llm: LLM, params: SamplingParams, prompt: list[int] = PROMPT) -> list[int]:
    return llm.generate(prompt, params)[0].outputs[0].token_ids


def _num_repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


def test_logit_bias_forces_a_token_under_greedy(llm: LLM) -> None:
    tokens = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=8, logit_bias={42: 100.0}))
    assert tokens == [42] * 8
    biased_away = SamplingParams(temperature=0.0, max_tokens=8, logit_bias={67: -100.0})
    assert _tokens(llm, biased_away)[0] != 67  # 67 is the unbiased greedy first token


@pytest.mark.parametrize(
    "penalty",
    [{"repetition_penalty": 2.0}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}],
)
def test_penalties_remove_repeats(llm: LLM, penalty: dict[str, float]) -> None:
    plain = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=12))
    penalised = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=12, **penalty))
    assert _num_repeats(plain) >= 5
    assert _num_repeats(penalised) == 0
    assert penalised[:3] == plain[:3]  # identical until the first repeat


def test_repetition_penalty_covers_the_prompt(llm: LLM) -> None:
    # Bias the prompt's token 5 to the top: the repetition penalty (prompt included) beats a
    # bias of +1 where the frequency penalty (output only) does not.
    bias = {5: 1.0}
    plain = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=3, logit_bias=bias))
    assert plain[0] == 5
    repetition = SamplingParams(
        temperature=0.0, max_tokens=3, logit_bias=bias, repetition_penalty=2.0
    )
    assert _tokens(llm, repetition)[0] != 5


def test_min_tokens_blocks_eos(llm: LLM) -> None:
    eos_first = {TINY_EOS_ID: 100.0}
    params = SamplingParams(temperature=0.0, max_tokens=10, logit_bias=eos_first)
    (output,) = llm.generate(PROMPT, params)[0].outputs
    assert output.token_ids == [TINY_EOS_ID] and output.finish_reason == "stop"
    held = SamplingParams(temperature=0.0, max_tokens=10, min_tokens=5, logit_bias=eos_first)
    (output,) = llm.generate(PROMPT, held)[0].outputs
    assert output.token_ids[5:] == [TINY_EOS_ID] and TINY_EOS_ID not in output.token_ids[:5]
    assert output.finish_reason == "stop" and "</s>" not in output.text


def test_min_tokens_holds_back_stop_strings(llm: LLM) -> None:
    first = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=1))[0]
    stop = SamplingParams(temperature=0.0, max_tokens=6, stop=[f"w{first}"])
    assert llm.generate(PROMPT, stop)[0].outputs[0].token_ids == [first]
    later = SamplingParams(temperature=0.0, max_tokens=6, stop=[f"w{first}"], min_tokens=2)
    assert len(llm.generate(PROMPT, later)[0].outputs[0].token_ids) == 6


def test_include_stop_str_in_output(llm: LLM) -> None:
    plain = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8))[0].outputs[0]
    third = f"w{plain.token_ids[2]}"
    cut = SamplingParams(temperature=0.0, max_tokens=8, stop=[third])
    kept = SamplingParams(
        temperature=0.0, max_tokens=8, stop=[third], include_stop_str_in_output=True
    )
    cut_text = llm.generate(PROMPT, cut)[0].outputs[0].text
    kept_output = llm.generate(PROMPT, kept)[0].outputs[0]
    assert kept_output.text == cut_text + third
    assert kept_output.stop_reason == third
    eos = SamplingParams(
        temperature=0.0,
        max_tokens=4,
        logit_bias={TINY_EOS_ID: 100.0},
        include_stop_str_in_output=True,
    )
    assert llm.generate(PROMPT, eos)[0].outputs[0].text.endswith("</s>")


def test_min_p_one_keeps_only_the_most_likely_token(llm: LLM) -> None:
    greedy = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=8))
    hot = SamplingParams(temperature=2.0, min_p=1.0, max_tokens=8, seed=1)
    assert _tokens(llm, hot) == greedy


def test_allowed_token_ids_restrict_sampling(llm: LLM) -> None:
    params = SamplingParams(temperature=2.0, max_tokens=16, seed=4, allowed_token_ids=[10, 11])
    assert set(_tokens(llm, params)) <= {10, 11}


def test_n_samples_are_distinct_and_equal_single_runs_with_derived_seeds(llm: LLM) -> None:
    params = SamplingParams(n=4, temperature=2.0, max_tokens=8, seed=7)
    (output,) = llm.generate(PROMPT, params)
    assert [c.index for c in output.outputs] == [0, 1, 2, 3]
    samples = [tuple(c.token_ids) for c in output.outputs]
    assert len(set(samples)) == 4
    singles = [
        tuple(_tokens(llm, SamplingParams(temperature=2.0, max_tokens=8, seed=7 + i)))
        for i in range(4)
    ]
    assert samples == singles
    unseeded = llm.generate(PROMPT, SamplingParams(n=3, temperature=2.0, max_tokens=8))[0]
    assert len({tuple(c.token_ids) for c in unseeded.outputs}) == 3


def test_n_samples_run_as_separate_requests(llm: LLM) -> None:
    """The scheduler sees n requests (the work), and the prompts keep their order."""
    seen: list[int] = []
    scheduler = llm.engine.scheduler
    add = scheduler.add_request

    def counting_add(request):  # type: ignore[no-untyped-def]
        seen.append(request.num_prompt_tokens)
        add(request)

    scheduler.add_request = counting_add  # type: ignore[method-assign]
    try:
        outputs = llm.generate([[5, 6], [7, 8, 9]], SamplingParams(n=3, max_tokens=2))
    finally:
        scheduler.add_request = add  # type: ignore[method-assign]
    assert seen == [2, 2, 2, 3, 3, 3]
    assert [len(o.outputs) for o in outputs] == [3, 3]
    assert [o.prompt_token_ids for o in outputs] == [[5, 6], [7, 8, 9]]


def test_logprobs_match_transformers_log_softmax(llm: LLM, tiny_llama_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=6, logprobs=5)
    (output,) = llm.generate(PROMPT, params)[0].outputs
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.tensor([[*PROMPT, *output.token_ids]])
    with torch.no_grad():
        reference = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    assert output.logprobs is not None and len(output.logprobs) == 6
    total = 0.0
    for step, (token, entry) in enumerate(zip(output.token_ids, output.logprobs, strict=True)):
        row = reference[len(PROMPT) - 1 + step]
        assert entry[token].logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert entry[token].rank == int((row > row[token]).sum()) + 1
        top = [t for t, lp in entry.items() if lp.rank <= 5]
        assert sorted(top) == sorted(row.topk(5).indices.tolist())
        assert entry[token].decoded_token == f"w{token}"
        total += entry[token].logprob
    assert output.cumulative_logprob == pytest.approx(total)
    plain = llm.generate(PROMPT, SamplingParams(max_tokens=2))[0].outputs[0]
    assert plain.logprobs is None and plain.cumulative_logprob is None


def test_vllm_constructor_names(tiny_llama_dir: Path, tmp_path: Path) -> None:
    short = LLM(tiny_llama_dir, max_model_len=16, served_model_name="tiny", dtype="auto")
    assert short.runner.max_model_len == 16 and short.served_model_name == "tiny"
    (output,) = short.generate([5] * 10, SamplingParams(max_tokens=50))[0].outputs
    assert len(output.token_ids) == 6 and output.finish_reason == "length"
    with pytest.raises(ValueError, match="tensor_parallel_size, trust_remote_code"):
        LLM(tiny_llama_dir, tensor_parallel_size=2, trust_remote_code=True)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        LLM(tiny_llama_dir, gpu_memory_utilization=0.9)
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(tiny_llama_dir, max_model_len=100_000)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        LLM(tiny_llama_dir, tokenizer=tmp_path)


@pytest.mark.parametrize("max_num_batched_tokens", [2048, 4])  # one prefill step, or chunks of 4
def test_prompt_logprobs_match_transformers(
    tiny_llama_dir: Path, max_num_batched_tokens: int
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    llm = LLM(tiny_llama_dir, max_num_batched_tokens=max_num_batched_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2, n=2)
    (output,) = llm.generate(prompt, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    entries = output.prompt_logprobs
    assert entries is not None and len(entries) == len(prompt) and entries[0] is None
    for position in range(1, len(prompt)):
        entry = entries[position]
        assert entry is not None
        token, row = prompt[position], reference[position - 1]
        assert entry[token].logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert entry[token].decoded_token == f"w{token}"
        assert {t for t, lp in entry.items() if lp.rank <= 2} == set(row.topk(2).indices.tolist())
    assert llm.generate(prompt, SamplingParams(max_tokens=1))[0].prompt_logprobs is None
