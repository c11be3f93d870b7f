"""The request bodies of /v1/completions and /v1/chat/completions, declared once (pydantic).

Every field OpenAI or vLLM defines is in one of three groups:
- implemented: typed fields the server acts on;
- accepted: fields that carry no behaviour in any server (`user`, `metadata`, ...);
- refused: fields that would change the output and are not implemented here; a request that
  sets one to anything but its default gets a 400 naming it (`REFUSED`).
Any other field is an unknown argument and gets a 400 naming it too, as OpenAI answers. So a
request is never half-served: nothing that changes the output is accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# Refused fields and the only values accepted for them (the defaults: "not asked for").
_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structural_tag")
_COMMON_REFUSED: dict[str, tuple[object, ...]] = {
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "prompt_logprobs": (None,),
    "truncate_prompt_tokens": (None,),
    "spaces_between_special_tokens": (None, True),
    "bad_words": (None, []),
    "logits_processors": (None, []),
    "return_tokens_as_token_ids": (None, False),
    "guided_decoding_backend": (None,),
    "guided_whitespace_pattern": (None,),
    "kv_transfer_params": (None,),
    "vllm_xargs": (None,),
    "mm_processor_kwargs": (None,),
    **{name: (None,) for name in _GUIDED},
}
COMPLETION_REFUSED: dict[str, tuple[object, ...]] = {
    **_COMMON_REFUSED,
    "suffix": (None, ""),
    "prompt_embeds": (None,),
    "response_format": (None, {"type": "text"}),
}
CHAT_REFUSED: dict[str, tuple[object, ...]] = {
    **_COMMON_REFUSED,
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),  # meaningless without tools: nothing to call
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "documents": (None, []),
    "continue_final_message": (None, False),
    "echo": (None, False),  # vLLM's chat echo of the last message
}
# Accepted for compatibility; they change nothing in any server's output.
ACCEPTED = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "cache_salt",
    "parallel_tool_calls",
    "request_id",
)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None  # a final chunk with the usage
    continuous_usage_stats: bool | None = None  # vLLM's usage on every chunk: refused if true


class _Request(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None  # None: the served model
    n: int | None = None  # samples per prompt
    best_of: int | None = None  # only None or n (vLLM v1 dropped best_of > n)
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM: 0 or -1 mean all
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias
    allowed_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    add_special_tokens: bool | None = None  # add BOS when tokenising
    max_tokens: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # The SLO: body fields win over the x- headers of the same meaning.
    slo_class: str | None = None
    priority: int | None = None  # 0 is most important (vLLM's priority: lower runs first)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    # Accepted, no behaviour.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    cache_salt: str | None = None
    parallel_tool_calls: bool | None = None
    request_id: str | None = None
    # Refused unless at their defaults (the tables above).
    use_beam_search: Any = None
    length_penalty: Any = None
    prompt_logprobs: Any = None
    truncate_prompt_tokens: Any = None
    spaces_between_special_tokens: Any = None
    bad_words: Any = None
    logits_processors: Any = None
    return_tokens_as_token_ids: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    structural_tag: Any = None
    guided_decoding_backend: Any = None
    guided_whitespace_pattern: Any = None
    kv_transfer_params: Any = None
    vllm_xargs: Any = None
    mm_processor_kwargs: Any = None
    response_format: Any = None


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: Any = None  # a string, token ids, or a list of either; checked by the parser
    echo: bool | None = None  # the prompt before the completion
    logprobs: int | None = None  # alternatives per token, 0..20
    suffix: Any = None
    prompt_embeds: Any = None


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: Any = None  # checked by the parser, which names the bad part
    max_completion_tokens: int | None = None  # wins over max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None  # alternatives per token, 0..20; needs logprobs true
    chat_template: str | None = None  # a jinja2 template instead of the model's
    chat_template_kwargs: dict[str, Any] | None = None  # extra template variables
    add_generation_prompt: bool | None = None  # default true: open the assistant's turn
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    documents: Any = None
    continue_final_message: Any = None
    echo: Any = None


def refused_field(request: _Request, refused: dict[str, tuple[object, ...]]) -> str | None:
    """The first refused field set to something other than its default, if any."""
    for name, accepted in refused.items():
        if getattr(request, name) not in accepted:
            return name
    return None
