"""The cost-aware scaler's settings (DESIGN.md §6), checked when built, as the scheduler's are."""

from __future__ import annotations

from dataclasses import dataclass

_POSITIVE = ("control_interval_s", "window_s", "bin_s", "scale_in_window_s", "budget_horizon_s")
_NON_NEGATIVE = ("min_observed_s", "headroom", "scale_in_headroom", "cooldown_s")
_FRACTIONS = ("target_attainment", "budget_floor")  # in (0, 1]


@dataclass(frozen=True, slots=True)
class HyperFlexisScalerConfig:
    control_interval_s: float = 10.0  # how often the driver calls `decide`; part of the look-ahead
    window_s: float = 60.0  # demand is measured over this much history
    bin_s: float = 5.0  # width of one rate sample of the trend fit
    min_observed_s: float = 10.0  # no action before this much demand has been seen
    target_attainment: float = 0.99  # attainment promised over the budget horizon
    budget_floor: float = 0.85  # lowest attainment one window is planned for (error budget)
    budget_horizon_s: float = 3600.0  # the error budget counts finishes over this long
    headroom: float = 0.15  # spare capacity above the forecast when sizing up
    # Headroom instead while the SLOs are met (None: always `headroom`): the model's load is then
    # evidently servable, so burst headroom is spent only once misses say it is needed.
    calm_headroom: float | None = 0.0
    scale_in_headroom: float = 0.1  # spare kept on a scale-in, above the window's own noise
    scale_in_window_s: float = 20.0  # ... and only after that held for this long
    cooldown_s: float = 20.0  # a pool that grew does not shrink until its new one served this long
    role_switch: bool = True  # flip prefill <-> decode instances instead of starting new ones

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ValueError(f"invalid scaler field {name!r}: must be > 0")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"invalid scaler field {name!r}: must be >= 0")
        if self.bin_s > self.window_s:
            raise ValueError("invalid scaler field 'bin_s': must be <= window_s")
        for name in _FRACTIONS:
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"invalid scaler field {name!r}: must be in (0, 1]")
        if self.calm_headroom is not None and not 0 <= self.calm_headroom <= self.headroom:
            raise ValueError("invalid scaler field 'calm_headroom': must be in [0, headroom]")

    @property
    def calm_or_default_headroom(self) -> float:
        """The headroom used while the SLOs are met."""
        return self.headroom if self.calm_headroom is None else self.calm_headroom
