"""Synthetic token-length distributions for prompts and outputs (seeded; every length >= 1).

Registered by name like the arrival processes; `parse_lengths` reads the compact form a command
line takes: `"128"` (fixed), `"fixed:value=128"`, `"uniform:lo=64,hi=512"`,
`"lognormal:mean=256,sigma=0.8"`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from hyperflexis.core.registry import Registry
from hyperflexis.workloads._checks import check_at_least, check_int, check_positive, make_registered


class LengthDistribution(Protocol):
    """Draws token counts."""

    name: ClassVar[str]  # the registry name

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        """`num_requests` lengths (int64, each >= 1)."""
        ...


_LENGTHS: Registry[type[Any]] = Registry("length distribution")
register_lengths = _LENGTHS.register  # class decorator: add under its `name`
length_names = _LENGTHS.names
_DIGITS = re.compile(r"[0-9]+")


def make_lengths(name: str, **params: float) -> LengthDistribution:
    """The distribution registered as `name`, built from its keyword parameters."""
    dist: LengthDistribution = make_registered(_LENGTHS, name, params)
    return dist


def parse_lengths(spec: str) -> LengthDistribution:
    """A distribution from `"name:key=value,..."`, or a bare integer for a fixed length."""
    text = spec.strip()
    if _is_int(text):
        return FixedLengths(int(text))
    name, _, rest = text.partition(":")
    params: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            params[key.strip()] = int(value) if _is_int(value.strip()) else float(value)
        except ValueError:
            raise ValueError(
                f"invalid length spec {spec!r}: expected 'name:key=value,...', e.g. "
                "'uniform:lo=64,hi=512'"
            ) from None
    return make_lengths(name.strip(), **params)


@register_lengths
@dataclass(frozen=True, slots=True)
class FixedLengths:
    """Every request the same length."""

    name: ClassVar[str] = "fixed"
    value: int  # tokens (>= 1)

    def __post_init__(self) -> None:
        check_int(self.value, "value")

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(num_requests, self.value, dtype=np.int64)


@register_lengths
@dataclass(frozen=True, slots=True)
class UniformLengths:
    """Uniform over the integers lo..hi, both included."""

    name: ClassVar[str] = "uniform"
    lo: int  # shortest (>= 1)
    hi: int  # longest (>= lo)

    def __post_init__(self) -> None:
        check_int(self.lo, "lo")
        check_int(self.hi, "hi")
        if self.hi < self.lo:
            raise ValueError(f"invalid parameter 'hi': expected >= lo ({self.lo}), got {self.hi}")

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo, self.hi, size=num_requests, endpoint=True, dtype=np.int64)


@register_lengths
@dataclass(frozen=True, slots=True)
class LogNormalLengths:
    """Log-normal with mean `mean` before rounding: heavy-tailed like real prompt and output
    lengths. mu = ln(mean) - sigma^2 / 2 sets the mean; lengths round to integers, then clip to
    [1, max_len]."""

    name: ClassVar[str] = "lognormal"
    mean: float  # target mean tokens (>= 1)
    sigma: float = 1.0  # standard deviation of ln(length); 0 gives `mean` every time
    max_len: int | None = None  # upper clip, or None for no clip

    def __post_init__(self) -> None:
        check_at_least(self.mean, "mean", 1.0)
        check_at_least(self.sigma, "sigma", 0.0)
        if self.max_len is not None:
            check_int(self.max_len, "max_len")

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2
        raw = np.rint(rng.lognormal(mu, self.sigma, size=num_requests))
        upper = np.inf if self.max_len is None else self.max_len
        return np.clip(raw, 1, upper).astype(np.int64)


def fit_lengths(
    prompt_lens: np.ndarray,
    output_lens: np.ndarray,
    *,
    length_scale: float | None = None,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    max_total_len: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lengths made to fit a model: first scaled by `length_scale` (a big model's trace onto a
    small model's context, keeping the distribution's shape), then clipped to the maxima. When
    prompt + output exceeds `max_total_len` the output is cut to `max_total_len - 1` at most and
    the prompt takes what is left. Every length stays >= 1.
    """
    prompts = np.asarray(prompt_lens, dtype=np.int64)
    outputs = np.asarray(output_lens, dtype=np.int64)
    if prompts.shape != outputs.shape or prompts.ndim != 1:
        raise ValueError(
            "invalid lengths: 'prompt_lens' and 'output_lens' must be 1-D and of equal size, "
            f"got shapes {prompts.shape} and {outputs.shape}"
        )
    if length_scale is not None:
        length_scale = check_positive(length_scale, "length_scale")
        prompts = np.rint(prompts * length_scale).astype(np.int64)
        outputs = np.rint(outputs * length_scale).astype(np.int64)
    prompts = np.maximum(prompts, 1)
    outputs = np.maximum(outputs, 1)
    if max_prompt_len is not None:
        check_int(max_prompt_len, "max_prompt_len")
        prompts = np.minimum(prompts, max_prompt_len)
    if max_output_len is not None:
        check_int(max_output_len, "max_output_len")
        outputs = np.minimum(outputs, max_output_len)
    if max_total_len is not None:
        check_int(max_total_len, "max_total_len", minimum=2)
        outputs = np.minimum(outputs, max_total_len - 1)
        prompts = np.minimum(prompts, max_total_len - outputs)
    return prompts, outputs


def _is_int(text: str) -> bool:
    return _DIGITS.fullmatch(text) is not None
