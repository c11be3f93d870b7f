"""Sampling parameters, validated on construction so bad values fail before they reach a step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens and when to stop; field names follow vLLM and the OpenAI API."""

    max_tokens: int = 16  # most output tokens to generate
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None  # keep the k most likely tokens; None keeps all
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p
    seed: int | None = None  # per-request seed: same seed, same tokens, whatever the batch
    stop: list[str] = field(default_factory=list)  # stop strings, not included in the text
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens besides EOS
    ignore_eos: bool = False  # keep generating past EOS (benchmarks)

    def __post_init__(self) -> None:
        stop: object = self.stop
        if isinstance(stop, str):
            self.stop = [stop]
        _check(_is_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", "an int >= 1")
        _check(
            _is_number(self.temperature) and 0.0 <= self.temperature <= 100.0,
            "temperature",
            "a number in [0, 100]",
        )
        _check(
            self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1),
            "top_k",
            "None or an int >= 1",
        )
        _check(_is_number(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "a number in (0, 1]")
        _check(self.seed is None or _is_int(self.seed), "seed", "None or an int")
        _check(
            isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
            "stop",
            "a non-empty string or a list of them",
        )
        _check(
            isinstance(self.stop_token_ids, list)
            and all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "a list of ints >= 0",
        )
        _check(isinstance(self.ignore_eos, bool), "ignore_eos", "a bool")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"invalid sampling parameter {name!r}: expected {expected}")
