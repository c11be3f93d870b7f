"""`LLM` end to end on a tiny random Llama: token-for-token parity with transformers' greedy
`generate` however the scheduler splits the work, KV freed afterwards, input shapes, clear errors,
stop strings and reproducible seeded sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperflexis import LLM, SamplingParams
from hyperflexis.core import SLO
from hyperflexis.core.outputs import RequestOutput
from tests.conftest import TINY_VOCAB_SIZE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_TOKENS = 12
PROMPT_LENS = (3, 17, 40, 71, 9)


def prompts() -> list[list[int]]:
    return [[(7 * i + 3 * n) % (TINY_VOCAB_SIZE - 3) + 3 for i in range(n)] for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path) -> list[list[int]]:
    """transformers' greedy output for each prompt alone (no padding to perturb it)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model.eval()
    outputs = []
    with torch.no_grad():
        for prompt in prompts():
            ids = torch.tensor([prompt])
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
            outputs.append(generated[0, len(prompt) :].tolist())
    return outputs


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(tiny_llama_dir)


def kv_bytes_for_blocks(tiny_llama_dir: Path, num_blocks: int, block_size: int) -> int:
    from hyperflexis.engine import ModelConfig, bytes_per_block

    config = ModelConfig.from_file(tiny_llama_dir / "config.json")
    return num_blocks * bytes_per_block(config, block_size, torch.float32)


def assert_all_kv_free(llm: LLM) -> None:
    kv = llm.engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert kv.owners() == []
    assert not llm.engine.has_unfinished()


GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"enable_chunked_prefill": False}, id="whole-prompts"),
        pytest.param({"max_num_batched_tokens": 8}, id="many-chunks"),
        pytest.param(
            {"block_size": 4, "kv_blocks": 24, "max_num_batched_tokens": 32}, id="preempt"
        ),
    ],
)
def test_greedy_matches_transformers(
    tiny_llama_dir: Path, reference: list[list[int]], settings: dict[str, int]
) -> None:
    settings = dict(settings)
    kv_blocks = settings.pop("kv_blocks", None)
    if kv_blocks is not None:
        settings["kv_cache_bytes"] = kv_bytes_for_blocks(
            tiny_llama_dir, kv_blocks, settings["block_size"]
        )
    llm = LLM(tiny_llama_dir, **settings)  # type: ignore[arg-type]
    outputs = llm.generate(prompts(), GREEDY)
    got = [o.outputs[0].token_ids for o in outputs]
    assert got == reference
    for output, prompt in zip(outputs, prompts(), strict=True):
        assert output.prompt_token_ids == prompt
        assert output.finished
        expected = "stop" if output.outputs[0].token_ids[-1] == 1 else "length"
        assert output.outputs[0].finish_reason == expected
    if kv_blocks is not None:
        assert llm.engine.scheduler.num_preemptions > 0
        assert any(o.metrics.num_preemptions for o in outputs)
    assert_all_kv_free(llm)


def test_inputs_text_lists_and_order(llm: LLM) -> None:
    one = llm.generate("w5 w6 w7", GREEDY)
    assert len(one) == 1 and one[0].prompt == "w5 w6 w7"
    assert one[0].prompt_token_ids == [0, 5, 6, 7]  # BOS added
    many = llm.generate(["w9", "w5 w6 w7", "w10 w11"], GREEDY)
    assert [o.prompt for o in many] == ["w9", "w5 w6 w7", "w10 w11"]
    assert many[1].outputs[0].token_ids == one[0].outputs[0].token_ids
    flat = llm.generate([0, 5, 6, 7], GREEDY)
    assert flat[0].prompt is None
    assert flat[0].outputs[0].token_ids == one[0].outputs[0].token_ids
    assert llm.generate([], GREEDY) == []
    first = many[0].outputs[0].text
    assert first and all(word.startswith("w") or word == "<unk>" for word in first.split())


def test_per_prompt_sampling_params_and_slos(llm: LLM) -> None:
    outputs = llm.generate(
        ["w5", "w6"],
        [SamplingParams(max_tokens=2, temperature=0), SamplingParams(max_tokens=5, temperature=0)],
        slos=["interactive", SLO(ttft_s=100.0, tpot_s=100.0)],
    )
    assert [len(o.outputs[0].token_ids) for o in outputs] == [2, 5]
    for output in outputs:
        metrics = output.metrics
        assert metrics.first_token_s is not None and metrics.finish_s is not None
        assert metrics.arrival_s <= metrics.first_token_s <= metrics.finish_s
        assert output.attained is not None
    assert outputs[1].attained is True


def test_chat_uses_the_template(llm: LLM) -> None:
    (reply,) = llm.chat([{"role": "user", "content": "w5 w6"}], GREEDY)
    assert reply.prompt_token_ids == [0, 5, 6, 3]
    both = llm.chat(
        [[{"role": "user", "content": "w5 w6"}], [{"role": "user", "content": "w7"}]], GREEDY
    )
    assert both[0].outputs[0].token_ids == reply.outputs[0].token_ids
    assert both[1].prompt_token_ids == [0, 7, 3]


def test_stop_string_cuts_real_text(llm: LLM) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    (full,) = llm.generate(["w20 w21"], params)
    words = full.outputs[0].text.split()
    assert len(words) >= 4
    stop = words[2]
    (cut,) = llm.generate(
        ["w20 w21"], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop])
    )
    text = full.outputs[0].text
    assert cut.outputs[0].text == text[: text.index(stop)]
    assert cut.outputs[0].finish_reason == "stop"
    assert cut.outputs[0].stop_reason == stop
    assert len(cut.outputs[0].token_ids) < 16
    assert_all_kv_free(llm)


def test_seeded_sampling_is_reproducible_across_runs_and_batches(llm: LLM) -> None:
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=42, ignore_eos=True)
    alone = llm.generate([[5, 6, 7]], seeded)[0].outputs[0].token_ids
    again = llm.generate([[5, 6, 7]], seeded)[0].outputs[0].token_ids
    unseeded = SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)
    batch = llm.generate(
        [[9] * 30, [5, 6, 7], [4, 4]],
        [unseeded, seeded, SamplingParams(max_tokens=3, temperature=0.7, seed=1)],
    )
    assert alone == again == batch[1].outputs[0].token_ids
    other_seed = SamplingParams(max_tokens=10, temperature=1.0, seed=43, ignore_eos=True)
    assert llm.generate([[5, 6, 7]], other_seed)[0].outputs[0].token_ids != alone


def test_sampling_is_reproducible_across_engines(tiny_llama_dir: Path) -> None:
    seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=42, ignore_eos=True)
    unseeded = SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True)

    def run(seed: int) -> list[list[int]]:
        outputs = LLM(tiny_llama_dir, seed=seed).generate([[5, 6, 7], [9, 9]], [seeded, unseeded])
        return [o.outputs[0].token_ids for o in outputs]

    first, second, other = run(0), run(0), run(1)
    assert first == second  # same engine seed: identical, seeded or not
    assert other[0] == first[0]  # a per-request seed does not depend on the engine's
    assert other[1] != first[1]


def test_abort_mid_generation_frees_kv(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    ids = [engine.add_request([5] * n, params) for n in (4, 30, 60)]
    for _ in range(5):
        engine.step()
    assert engine.scheduler.kv.num_free_blocks < engine.scheduler.kv.num_blocks
    finals: list[RequestOutput | None] = [engine.abort(request_id) for request_id in ids]
    assert all(f is not None and f.outputs[0].finish_reason == "abort" for f in finals)
    assert_all_kv_free(llm)


def test_generation_stops_at_the_context_end(llm: LLM) -> None:
    (out,) = llm.generate(
        [[5] * 250], SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    )
    assert len(out.outputs[0].token_ids) == 6  # 256 positions
    assert out.outputs[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([[]], "no tokens"),
        ([[5] * 256], "256 tokens leave no room to generate in the model's context of 256"),
        ([[5, 128]], "token id 128 is outside the vocabulary of 128 tokens"),
    ],
)
def test_bad_prompts_fail_clearly_and_leave_nothing_queued(
    llm: LLM, prompt: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        llm.generate([[5, 6], *prompt], GREEDY)  # type: ignore[list-item]
    assert_all_kv_free(llm)


def test_bad_arguments_fail_clearly(llm: LLM, tiny_llama_dir: Path) -> None:
    with pytest.raises(ValueError, match="'sampling_params': 1 values for 2 prompts"):
        llm.generate(["w5", "w6"], [GREEDY])
    with pytest.raises(ValueError, match="'slos': 3 values for 2 prompts"):
        llm.generate(["w5", "w6"], GREEDY, slos=["batch"] * 3)
    with pytest.raises(ValueError, match="unknown SLO class 'nope'"):
        llm.generate(["w5"], GREEDY, slos="nope")
    with pytest.raises(ValueError, match="'temperature'"):
        llm.generate(["w5"], SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="'top_p'"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="'max_tokens'"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        llm.generate(["w5", 3.5], GREEDY)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'nope'; known: .*fcfs"):
        LLM(tiny_llama_dir, policy="nope")
    assert_all_kv_free(llm)


def test_use_tqdm_runs(llm: LLM) -> None:
    outputs = llm.generate(["w5", "w6"], GREEDY, use_tqdm=True)
    assert len(outputs) == 2


def test_slo_policy_profiles_once_and_caches(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hyperflexis.perf import OnlineCorrection

    monkeypatch.setenv("HYPERFLEXIS_CACHE_DIR", str(tmp_path))
    llm = LLM(tiny_llama_dir, policy="hyperflexis")
    profiles = list((tmp_path / "profiles").glob("*.json"))
    assert len(profiles) == 1
    assert isinstance(llm.engine.scheduler.cost_model, OnlineCorrection)
    mtime = profiles[0].stat().st_mtime_ns
    LLM(tiny_llama_dir, policy="hyperflexis")
    assert profiles[0].stat().st_mtime_ns == mtime  # the cached profile, not a new one

    # A profile timed the old way (no "timing" key: medians of repeats) is stale: re-profiled.
    doc = json.loads(profiles[0].read_text())
    del doc["timing"]
    profiles[0].write_text(json.dumps(doc))
    LLM(tiny_llama_dir, policy="hyperflexis")
    assert json.loads(profiles[0].read_text())["timing"] == "min-of-repeats"


def test_slo_policy_feeds_online_correction(tiny_llama_dir: Path) -> None:
    from hyperflexis.perf import OnlineCorrection, ProfiledCostModel

    correction = OnlineCorrection(ProfiledCostModel((1e-3, 1e-5, 1e-8, 1e-4, 1e-7)))
    llm = LLM(tiny_llama_dir, policy="hyperflexis", cost_model=correction)
    outputs = llm.generate([[5, 6, 7], [8] * 20], GREEDY, slos="batch")
    assert all(o.outputs[0].finish_reason in ("stop", "length") for o in outputs)
    assert correction.num_observations > 0
    assert_all_kv_free(llm)
