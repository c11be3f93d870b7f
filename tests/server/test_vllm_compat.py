"""What a vLLM user relies on, against one live `hyperflexis serve` of the tiny transformers
Llama (module-scoped): logprobs in both formats equal to transformers' log-softmax, `n` samples,
echo, lists of prompts, OpenAI's max_tokens default, /v1/models, /tokenize, /detokenize,
/version, /ping; and a short script each for the openai client, litellm and langchain-openai."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.live import LiveServer, start_server, stop_server

PROMPT = [5, 6, 7]
CHAT_TEMPLATE = (  # the tiny checkpoint's template, but opening the reply with w4
    "{{ bos_token }} {% for m in messages %}{{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}w4{% endif %}"
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("vllm-compat")
    args = [str(tiny_llama_dir), "--instances", "1", "--profile", str(fixed_profile)]
    # vLLM's spellings: the model positional, names, a shorter context, a template string.
    args += ["--served-model-name", "tiny", "tiny-alias", "--max-model-len", "128"]
    args += ["--chat-template", CHAT_TEMPLATE, "--block-size", "8", "--dtype", "auto"]
    args += ["--max-num-seqs", "8"]
    live = start_server(args, tmp)
    yield live
    stop_server(live.process)


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path) -> Any:
    """log_softmax of the checkpoint's logits for a token sequence, by transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)

    def log_softmax(token_ids: list[int]) -> Any:
        with torch.no_grad():
            logits = model(torch.tensor([token_ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    return log_softmax


def _post(server: LiveServer, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


SPECIAL = {"<s>": 0, "</s>": 1, "<unk>": 2}  # the tiny tokenizer's; then w3 .. w127


def _token_id(text: str) -> int:
    return SPECIAL[text] if text in SPECIAL else int(text.removeprefix("w"))


def test_models_version_ping_tokenize(server: LiveServer, tiny_llama_dir: Path) -> None:
    (model,) = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    assert model["id"] == "tiny" and model["root"] == str(tiny_llama_dir)
    assert model["max_model_len"] == 128  # --max-model-len
    alias = {"model": "tiny-alias", "prompt": "w5", "max_tokens": 1}
    assert _post(server, "/v1/completions", alias)["model"] == "tiny"
    assert httpx.get(f"{server.url}/version", timeout=10).json()["version"]
    assert httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
    tokens = _post(server, "/tokenize", {"prompt": "w5 w6", "return_token_strs": True})
    assert tokens == {
        "count": 3,
        "max_model_len": 128,
        "tokens": [0, 5, 6],
        "token_strs": ["<s>", "w5", "w6"],
    }
    chat = _post(server, "/tokenize", {"messages": [{"role": "user", "content": "w9"}]})
    assert chat["tokens"] == [0, 9, 4]  # --chat-template: BOS, the content, then w4
    assert _post(server, "/detokenize", {"tokens": [5, 6]}) == {"prompt": "w5 w6"}
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [10**6]}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_completion_logprobs_match_transformers(server: LiveServer, reference: Any) -> None:
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 3}
    (choice,) = _post(server, "/v1/completions", body)["choices"]
    logprobs = choice["logprobs"]
    token_ids = [_token_id(t) for t in logprobs["tokens"]]
    table = reference(PROMPT + token_ids)
    for step, (token, value) in enumerate(zip(token_ids, logprobs["token_logprobs"], strict=True)):
        row = table[len(PROMPT) - 1 + step]
        assert value == pytest.approx(float(row[token]), abs=1e-4)
        top = {_token_id(t) for t in logprobs["top_logprobs"][step]}
        assert set(row.topk(3).indices.tolist()) <= top
    offsets = logprobs["text_offset"]
    assert offsets == sorted(offsets) and len(offsets) == 4


def test_echo_with_logprobs_scores_the_prompt(server: LiveServer, reference: Any) -> None:
    """What evaluation harnesses send to score a text: echo, logprobs, one token."""
    body = {"prompt": "w5 w6 w7", "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
    (choice,) = _post(server, "/v1/completions", body)["choices"]
    logprobs = choice["logprobs"]
    assert logprobs["tokens"][:4] == ["<s>", "w5", "w6", "w7"] and len(logprobs["tokens"]) == 5
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    table = reference([0, 5, 6, 7])
    for position, token in enumerate([5, 6, 7], start=1):
        expected = float(table[position - 1][token])
        assert logprobs["token_logprobs"][position] == pytest.approx(expected, abs=1e-4)
    assert choice["text"].startswith("w5 w6 w7")


def test_chat_logprobs_match_transformers(server: LiveServer, reference: Any) -> None:
    messages = [{"role": "user", "content": "w9 w10"}]
    prompt = _post(server, "/tokenize", {"messages": messages})["tokens"]
    body = {"messages": messages, "max_tokens": 3, "temperature": 0, "logprobs": True}
    (choice,) = _post(server, "/v1/chat/completions", {**body, "top_logprobs": 2})["choices"]
    content = choice["logprobs"]["content"]
    token_ids = [_token_id(entry["token"]) for entry in content]
    table = reference(prompt + token_ids)
    for step, entry in enumerate(content):
        row = table[len(prompt) - 1 + step]
        assert entry["logprob"] == pytest.approx(float(row[token_ids[step]]), abs=1e-4)
        assert [_token_id(t["token"]) for t in entry["top_logprobs"]] == row.topk(
            2
        ).indices.tolist()
        assert entry["bytes"] == list(entry["token"].encode())


def test_n_samples_equal_single_requests_with_derived_seeds(server: LiveServer) -> None:
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 2.0, "seed": 21}
    choices = _post(server, "/v1/completions", {**body, "n": 3})["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    texts = [c["text"] for c in choices]
    assert len(set(texts)) == 3
    singles = [
        _post(server, "/v1/completions", {**body, "seed": 21 + i})["choices"][0]["text"]
        for i in range(3)
    ]
    assert texts == singles


def test_n_streams_every_choice_to_its_end(server: LiveServer) -> None:
    body = {"prompt": PROMPT, "max_tokens": 4, "n": 2, "stream": True, "ignore_eos": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            finished.add(choice["index"])
    assert finished == {0, 1} and all(len(t.split()) == 4 for t in texts.values())
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


def test_chat_stream_carries_logprobs_and_every_choice(server: LiveServer) -> None:
    messages = [{"role": "user", "content": "w9 w10"}]
    body = {"messages": messages, "max_tokens": 4, "temperature": 0, "logprobs": True, "n": 2}
    full = _post(server, "/v1/chat/completions", {**body, "top_logprobs": 1})
    streamed: dict[int, list[str]] = {0: [], 1: []}
    roles = set()
    request = {**body, "top_logprobs": 1, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=request, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            (choice,) = json.loads(line[6:])["choices"]
            if choice["delta"].get("role"):
                roles.add(choice["index"])
            for entry in (choice["logprobs"] or {}).get("content", []):
                streamed[choice["index"]].append(entry["token"])
    assert roles == {0, 1}
    for choice in full["choices"]:  # greedy: both samples, streamed or not, are the same
        assert streamed[choice["index"]] == [e["token"] for e in choice["logprobs"]["content"]]


def test_echo_lists_of_prompts_and_the_max_tokens_default(server: LiveServer) -> None:
    echo = _post(server, "/v1/completions", {"prompt": "w5 w6", "max_tokens": 2, "echo": True})
    assert echo["choices"][0]["text"].startswith("w5 w6")
    body = {"prompt": ["w5", [7, 8, 9]], "max_tokens": 2, "n": 2, "ignore_eos": True}
    listed = _post(server, "/v1/completions", body)
    assert [c["index"] for c in listed["choices"]] == [0, 1, 2, 3]
    assert listed["usage"]["prompt_tokens"] == 2 + 3  # each prompt once ("w5" is BOS + w5)
    assert listed["usage"]["completion_tokens"] == 8
    null = {"prompt": PROMPT, "max_tokens": None, "ignore_eos": True}
    assert _post(server, "/v1/completions", null)["usage"]["completion_tokens"] == 16


def test_penalties_and_bias_reach_the_engine(server: LiveServer) -> None:
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logit_bias": {"42": 100}}
    assert _post(server, "/v1/completions", body)["choices"][0]["text"].split() == ["w42"] * 4
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "repetition_penalty": 2.0}
    words = _post(server, "/v1/completions", body)["choices"][0]["text"].split()
    assert len(set(words)) == len(words) == 12


# -- the client stacks a vLLM user already has -----------------------------------------------


def test_openai_client_script(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    (model,) = client.models.list().data
    completion = client.completions.create(
        model=model.id, prompt="w5 w6", max_tokens=3, logprobs=2, n=2, seed=1, temperature=1.0
    )
    assert len(completion.choices) == 2
    assert completion.choices[0].logprobs is not None
    assert len(completion.choices[0].logprobs.tokens or []) == 3
    chat = client.chat.completions.create(
        model=model.id,
        messages=[{"role": "user", "content": "w9"}],
        max_completion_tokens=3,
        logprobs=True,
        top_logprobs=2,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        extra_body={"min_tokens": 3, "repetition_penalty": 1.1, "top_k": 20},
    )
    assert chat.choices[0].logprobs is not None
    assert len(chat.choices[0].logprobs.content or []) == 3
    stream = client.chat.completions.create(
        model=model.id, messages=[{"role": "user", "content": "w9"}], max_tokens=3, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


@pytest.mark.filterwarnings("ignore::UserWarning")  # litellm's own pydantic models warn on import
def test_litellm_script(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    litellm = pytest.importorskip("litellm")
    model_id = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"]
    for provider in ("hosted_vllm", "openai"):
        response = litellm.completion(
            model=f"{provider}/{model_id}",
            api_base=f"{server.url}/v1",
            api_key="none",
            messages=[{"role": "user", "content": "w9 w10"}],
            max_tokens=3,
            temperature=0,
        )
        assert response.choices[0].message.content.strip()
        assert response.usage.completion_tokens <= 3


def test_langchain_openai_script(server: LiveServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    model_id = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"]
    chat = langchain_openai.ChatOpenAI(
        model=model_id,
        base_url=f"{server.url}/v1",
        api_key="none",
        max_tokens=3,
        temperature=0,
        max_retries=0,
        timeout=60,
    )
    reply = chat.invoke("w9 w10")
    assert reply.content.strip()
    streamed = "".join(str(chunk.content) for chunk in chat.stream("w9 w10"))
    assert streamed == reply.content  # greedy: the same text either way
    llm = langchain_openai.OpenAI(
        model=model_id, base_url=f"{server.url}/v1", api_key="none", max_tokens=3, max_retries=0
    )
    assert llm.invoke("w5 w6").strip()
