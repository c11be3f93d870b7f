"""Steps that vary: what the simulator charges a step against what the latency model predicts.

Real steps scatter around any fitted model, and a model fitted elsewhere may be off by a fixed
factor. `StepNoise` makes the charged time `predicted x (1 + bias) x e_k`, where `e_k` is
lognormal with mean 1 and coefficient of variation `cv`, drawn for step k of an instance from a
stream seeded by (seed, instance id). The schedulers still plan with the prediction. A step's
factor depends only on its index on its instance, so a decode-only stretch fast-forwarded in one
go is charged exactly as if stepped one by one, and a window cut short wastes no draw. With
`cv = 0` and `bias = 0` nothing is drawn and every step takes its prediction exactly.

Decode-only steps may have a bias and CV of their own (`decode_bias`, `decode_cv`; None: the
same as every other step's): a linear profile fitted on one machine can be off by a different
factor for decode-only batches than for batches with prefill (docs/results.md, "Live step
times"), and `benchmarks/fidelity.py` measures both live. Step k then takes `exp(mu + sigma z_k)`
of its kind, with one standard normal `z_k` per step index, so the stream of draws is the same
whatever the kinds.

`truth`, when given, is the model a step's time follows instead of the schedulers' prediction
(a latency model fitted on a live instance's own steps, where the schedulers plan with the
profile it started from): step k then takes `truth(step) x (1 + bias) x e_k`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from hyperflexis.perf.base import StepCostModel, StepFeatures

_BATCH = 256  # factors drawn at a time


@dataclass(frozen=True, slots=True)
class StepNoise:
    cv: float = 0.0  # coefficient of variation of a step's time around its prediction
    bias: float = 0.0  # profile error: every step takes (1 + bias) x its prediction on average
    seed: int = 0
    decode_cv: float | None = None  # of decode-only steps; None: `cv`
    decode_bias: float | None = None  # of decode-only steps; None: `bias`
    truth: StepCostModel | None = field(default=None, compare=False)  # None: the prediction

    def __post_init__(self) -> None:
        for cv in (self.cv, self.decode_cv):
            if cv is not None and not (math.isfinite(cv) and cv >= 0):
                raise ValueError(f"invalid step noise CV {cv}: must be a finite number >= 0")
        for bias in (self.bias, self.decode_bias):
            if bias is not None and not (math.isfinite(bias) and bias > -1):
                raise ValueError(f"invalid profile error {bias}: must be a finite number > -1")

    @property
    def decode(self) -> tuple[float, float]:
        """(CV, bias) of decode-only steps."""
        cv = self.cv if self.decode_cv is None else self.decode_cv
        return cv, self.bias if self.decode_bias is None else self.decode_bias

    @property
    def is_exact(self) -> bool:
        """Every step takes exactly its prediction."""
        return self.cv == 0 and self.bias == 0 and self.decode == (0, 0) and self.truth is None

    def for_instance(self, instance_id: str) -> StepTimes | None:
        """The charged-time stream of one instance; None when steps are exact."""
        return None if self.is_exact else StepTimes(self, instance_id)


EXACT_STEPS = StepNoise()  # every step takes exactly its prediction


class _Kind:
    """The lognormal of one kind of step: `scale x exp(mu + sigma z)`, mean `scale`."""

    __slots__ = ("mu", "scale", "sigma")

    def __init__(self, cv: float, bias: float) -> None:
        self.scale = 1.0 + bias
        sigma2 = math.log1p(cv * cv)
        self.sigma = math.sqrt(sigma2)
        self.mu = -sigma2 / 2  # mean of the lognormal is 1

    def factor(self, z: float) -> float:
        return self.scale if self.sigma == 0 else self.scale * math.exp(self.mu + z * self.sigma)


class StepTimes:
    """One instance's step time factors, drawn lazily in step order and kept by index."""

    def __init__(self, noise: StepNoise, instance_id: str) -> None:
        self._any = _Kind(noise.cv, noise.bias)
        self._decode = _Kind(*noise.decode)
        self._draws = self._any.sigma > 0 or self._decode.sigma > 0
        # A string seed is hashed with SHA-512: the same stream in every process.
        self._rng = random.Random(f"{noise.seed}:{instance_id}")
        self._z: list[float] = []
        self._truth = noise.truth

    def factor(self, step_index: int, decode_only: bool = False) -> float:
        kind = self._decode if decode_only else self._any
        if not self._draws:
            return kind.scale
        z = self._z
        while step_index >= len(z):
            draw = self._rng.normalvariate
            z.extend(draw(0.0, 1.0) for _ in range(_BATCH))
        return kind.factor(z[step_index])

    def charge(
        self, step_index: int, predicted_s: float, features: StepFeatures | None = None
    ) -> float:
        """The time step `step_index` of the instance takes, predicted `predicted_s`; its
        `features` tell its kind (None: a step with prefill) and feed `truth`."""
        if features is None:
            return predicted_s * self.factor(step_index)
        base_s = predicted_s if self._truth is None else self._truth.predict(features)
        return base_s * self.factor(step_index, not features.num_prefill_tokens)
