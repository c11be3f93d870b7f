"""Steps that vary: what the simulator charges a step against what the latency model predicts.

Real steps scatter around any fitted model, and a model fitted elsewhere may be off by a fixed
factor. `StepNoise` makes the charged time `predicted x (1 + bias) x e_k`, where `e_k` is
lognormal with mean 1 and coefficient of variation `cv`, drawn for step k of an instance from a
stream seeded by (seed, instance id). The schedulers still plan with the prediction. A step's
factor depends only on its index on its instance, so a decode-only stretch fast-forwarded in one
go is charged exactly as if stepped one by one, and a window cut short wastes no draw. With
`cv = 0` and `bias = 0` nothing is drawn and every step takes its prediction exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_BATCH = 256  # factors drawn at a time


@dataclass(frozen=True, slots=True)
class StepNoise:
    cv: float = 0.0  # coefficient of variation of a step's time around its prediction
    bias: float = 0.0  # profile error: every step takes (1 + bias) x its prediction on average
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"invalid step noise CV {self.cv}: must be a finite number >= 0")
        if not (math.isfinite(self.bias) and self.bias > -1):
            raise ValueError(f"invalid profile error {self.bias}: must be a finite number > -1")

    @property
    def is_exact(self) -> bool:
        """Every step takes exactly its prediction."""
        return self.cv == 0 and self.bias == 0

    def for_instance(self, instance_id: str) -> StepTimes | None:
        """The charged-time stream of one instance; None when steps are exact."""
        return None if self.is_exact else StepTimes(self, instance_id)


EXACT_STEPS = StepNoise()  # every step takes exactly its prediction


class StepTimes:
    """One instance's step time factors, drawn lazily in step order and kept by index."""

    def __init__(self, noise: StepNoise, instance_id: str) -> None:
        self._scale = 1.0 + noise.bias
        sigma2 = math.log1p(noise.cv * noise.cv)
        self._sigma = math.sqrt(sigma2)
        self._mu = -sigma2 / 2  # mean of the lognormal is 1
        # A string seed is hashed with SHA-512: the same stream in every process.
        self._rng = random.Random(f"{noise.seed}:{instance_id}")
        self._factors: list[float] = []

    def factor(self, step_index: int) -> float:
        factors = self._factors
        while step_index >= len(factors):
            if self._sigma == 0:
                factors.extend([self._scale] * _BATCH)
            else:
                draw, mu, sigma = self._rng.lognormvariate, self._mu, self._sigma
                factors.extend(self._scale * draw(mu, sigma) for _ in range(_BATCH))
        return factors[step_index]

    def charge(self, step_index: int, predicted_s: float) -> float:
        """The time step `step_index` of the instance takes, predicted `predicted_s`."""
        return predicted_s * self.factor(step_index)
