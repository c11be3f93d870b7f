"""Sampling parameters, validated on construction so bad values fail before they reach a step.

The fields, their names, defaults and positional order are vLLM's (`SamplingParams(n, best_of,
presence_penalty, ...)`), so code written for vLLM runs unchanged. vLLM fields that would change
the output but are not implemented here (`guided_decoding`, `bad_words`, ...) are declared
so that setting one fails loudly by name instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs: most alternatives per token


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens and when to stop; field names and order follow vLLM."""

    n: int = 1  # samples of the prompt, each its own request with a derived seed
    best_of: int | None = None  # vLLM v1 dropped best_of > n; only None or n is accepted
    presence_penalty: float = 0.0  # subtracted from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the output
    repetition_penalty: float = 1.0  # divides positive (multiplies negative) logits of tokens
    # seen in the prompt or the output (the CTRL paper's rule, as vLLM and transformers apply it)
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p
    top_k: int | None = None  # keep the k most likely tokens; None (or vLLM's 0 / -1) keeps all
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    seed: int | None = None  # per-request seed: same seed, same tokens, whatever the batch
    stop: list[str] = field(default_factory=list)  # stop strings, cut from the text
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens besides EOS
    ignore_eos: bool = False  # keep generating past EOS (benchmarks)
    max_tokens: int = 16  # most output tokens to generate
    min_tokens: int = 0  # EOS, stop tokens and stop strings cannot end it before this many
    logprobs: int | None = None  # return the sampled token's logprob and this many alternatives
    prompt_logprobs: int | None = None  # each prompt token's logprob and this many alternatives
    detokenize: bool = True  # only True: text is always produced
    skip_special_tokens: bool = True  # leave special tokens out of the text
    spaces_between_special_tokens: bool = True  # only True (the tokenizer's own decoding)
    logits_processors: Any = None  # not implemented: refused unless None
    include_stop_str_in_output: bool = False  # keep the stop string (or stop token) in the text
    truncate_prompt_tokens: int | None = None  # not implemented: refused unless None
    output_kind: Any = None  # vLLM's streaming mode: refused unless None (outputs are whole)
    guided_decoding: Any = None  # not implemented: refused unless None
    logit_bias: dict[int, float] | None = None  # added to the logits of these token ids
    allowed_token_ids: list[int] | None = None  # sample only among these tokens
    extra_args: dict[str, Any] | None = None  # carried along, never read (as in vLLM)
    bad_words: list[str] | None = None  # not implemented: refused unless None

    def __post_init__(self) -> None:
        stop: Any = self.stop  # vLLM also takes one string, or None
        self.stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        stop_token_ids: Any = self.stop_token_ids
        if stop_token_ids is None:
            self.stop_token_ids = []
        if self.top_k in (0, -1):  # vLLM spells "no top-k" 0 (older versions -1)
            self.top_k = None
        if self.logit_bias is not None and isinstance(self.logit_bias, dict):
            # JSON object keys are strings: accept "42" as OpenAI does.
            bias: dict[Any, float] = self.logit_bias
            self.logit_bias = {_token_key(k): v for k, v in bias.items()}
        _check_counts(self)
        _check_distribution(self)
        _check_stops(self)
        _check_unsupported(self)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    @property
    def named_token_ids(self) -> set[int]:
        """Token ids the parameters name (biases, allowed and stop tokens), for the engine to
        check against the vocabulary."""
        ids = set(self.stop_token_ids) | set(self.allowed_token_ids or ())
        return ids | set(self.logit_bias or ())

    def for_sample(self, index: int) -> SamplingParams:
        """The parameters of sample `index` of `n`: one sample, seed + index when seeded (as
        vLLM derives its child requests' seeds), so each sample has its own seed stream."""
        seed = None if self.seed is None else self.seed + index
        return dataclasses.replace(self, n=1, best_of=None, seed=seed)


def _check_counts(p: SamplingParams) -> None:
    _check(_is_int(p.n) and p.n >= 1, "n", "an int >= 1")
    _check(
        p.best_of is None or (_is_int(p.best_of) and p.best_of == p.n),
        "best_of",
        "None or equal to n (best_of > n is not supported, as in vLLM v1)",
    )
    _check(_is_int(p.max_tokens) and p.max_tokens >= 1, "max_tokens", "an int >= 1")
    _check(
        _is_int(p.min_tokens) and 0 <= p.min_tokens <= p.max_tokens,
        "min_tokens",
        "an int in [0, max_tokens]",
    )
    _check(
        p.logprobs is None or (_is_int(p.logprobs) and 0 <= p.logprobs <= MAX_LOGPROBS),
        "logprobs",
        f"None or an int in [0, {MAX_LOGPROBS}]",
    )
    _check(
        p.prompt_logprobs is None
        or (_is_int(p.prompt_logprobs) and 0 <= p.prompt_logprobs <= MAX_LOGPROBS),
        "prompt_logprobs",
        f"None or an int in [0, {MAX_LOGPROBS}]",
    )
    _check(p.seed is None or _is_int(p.seed), "seed", "None or an int")


def _check_distribution(p: SamplingParams) -> None:
    _check(
        _is_number(p.temperature) and 0.0 <= p.temperature <= 100.0,
        "temperature",
        "a number in [0, 100]",
    )
    _check(
        p.top_k is None or (_is_int(p.top_k) and p.top_k >= 1),
        "top_k",
        "None, 0 or -1 (all tokens), or an int >= 1",
    )
    _check(_is_number(p.top_p) and 0.0 < p.top_p <= 1.0, "top_p", "a number in (0, 1]")
    _check(_is_number(p.min_p) and 0.0 <= p.min_p <= 1.0, "min_p", "a number in [0, 1]")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name)
        _check(_is_number(value) and -2.0 <= value <= 2.0, name, "a number in [-2, 2]")
    _check(
        _is_number(p.repetition_penalty) and 0.0 < p.repetition_penalty <= 2.0,
        "repetition_penalty",
        "a number in (0, 2]",
    )
    bias = p.logit_bias
    _check(
        bias is None
        or (
            isinstance(bias, dict)
            and all(
                _is_int(k) and k >= 0 and _is_number(v) and -100 <= v <= 100
                for k, v in bias.items()
            )
        ),
        "logit_bias",
        "an object of token id -> bias in [-100, 100]",
    )
    allowed = p.allowed_token_ids
    _check(
        allowed is None
        or (
            isinstance(allowed, list)
            and bool(allowed)
            and all(_is_int(t) and t >= 0 for t in allowed)
        ),
        "allowed_token_ids",
        "None or a non-empty list of token ids",
    )


def _check_stops(p: SamplingParams) -> None:
    _check(
        isinstance(p.stop, list) and all(isinstance(s, str) and s for s in p.stop),
        "stop",
        "a non-empty string or a list of them",
    )
    _check(
        isinstance(p.stop_token_ids, list) and all(_is_int(t) and t >= 0 for t in p.stop_token_ids),
        "stop_token_ids",
        "a list of ints >= 0",
    )
    for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output"):
        _check(isinstance(getattr(p, name), bool), name, "a bool")


# Fields vLLM has and HyperFlexis does not implement, with the only value accepted.
UNSUPPORTED: dict[str, object] = {
    "detokenize": True,
    "spaces_between_special_tokens": True,
    "logits_processors": None,
    "truncate_prompt_tokens": None,
    "output_kind": None,
    "guided_decoding": None,
    "bad_words": None,
}


def _check_unsupported(p: SamplingParams) -> None:
    for name, accepted in UNSUPPORTED.items():
        if getattr(p, name) != accepted:
            raise ValueError(
                f"invalid sampling parameter {name!r}: not supported by HyperFlexis "
                f"(only {accepted!r})"
            )


def _token_key(key: Any) -> Any:
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return key


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"invalid sampling parameter {name!r}: expected {expected}")
