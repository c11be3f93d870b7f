"""The SLO error budget (DESIGN.md §6): `target_attainment` is a promise over a long horizon,
not for every control window, as SRE practice treats an availability target.

Over the horizon the target allows `(1 - target) x finished` misses. The budget's unspent
fraction is `1 - misses / allowed` (1: nothing missed, 0: exactly the allowed misses, below 0:
overspent). Each window is planned at the target lowered by that fraction of the way to the
floor: with the budget untouched a window may plan at `floor`, with it spent (or overspent) at
the full target. A window's own shortfall can so never exceed `target - floor`, and as the
misses approach the allowance the planned target climbs back. With a model whose predicted
attainment is met, the run's attainment settles at the target: there the fraction is 0 and the
window is planned at the target itself.
"""

from __future__ import annotations

from collections import deque


def window_target(attained: int, finished: int, target: float, floor: float) -> float:
    """The attainment to plan the next window for, in `[floor, target]`: the target lowered by
    the unspent fraction of the error budget of `finished` requests, `attained` of them on
    time. Without finishes (no evidence) or with a target of 1 (no budget), the target."""
    floor = min(floor, target)
    allowed = (1.0 - target) * finished
    if finished <= 0 or allowed <= 0:
        return target
    unspent = 1.0 - (finished - attained) / allowed
    return target - (target - floor) * min(max(unspent, 0.0), 1.0)


class ErrorBudget:
    """Finishes over the last `horizon_s` seconds (the driver's clock), and the window target
    their error budget allows."""

    def __init__(self, horizon_s: float) -> None:
        if not horizon_s > 0:
            raise ValueError(f"invalid 'horizon_s': must be > 0, got {horizon_s}")
        self.horizon_s = horizon_s
        self._finishes: deque[tuple[float, bool]] = deque()
        self._attained = 0

    def record(self, now: float, attained: bool) -> None:
        self._finishes.append((now, attained))
        self._attained += attained

    def counts(self, now: float) -> tuple[int, int]:
        """(attained, finished) within the horizon ending at `now`."""
        while self._finishes and self._finishes[0][0] <= now - self.horizon_s:
            _, attained = self._finishes.popleft()
            self._attained -= attained
        return self._attained, len(self._finishes)

    def target(self, now: float, target: float, floor: float) -> float:
        """`window_target` for the finishes within the horizon ending at `now`."""
        attained, finished = self.counts(now)
        return window_target(attained, finished, target, floor)
