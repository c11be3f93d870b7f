"""Instance scheduler settings: one small dataclass, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["mixed", "prefill", "decode"]
ROLES: tuple[Role, ...] = ("mixed", "prefill", "decode")
# hyperflexis: plan decodes' deadlines this fraction of their TPOT early; held exactly at their
# targets, real step times that scatter around the prediction miss about half of them.
DEFAULT_TPOT_MARGIN = 0.05
# hyperflexis: plan prefill at this fraction below the predicted rate. The feasibility check
# plans the queue as if nothing more urgent arrived; arrivals with earlier deadlines take their
# share of the rate first (DESIGN.md §4.3: estimate the rate conservatively).
DEFAULT_PREFILL_RATE_MARGIN = 0.2


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    role: Role = "mixed"  # what this instance runs: both phases, prefill only, or decode only
    max_num_batched_tokens: int = 2048  # token budget of one step (prefill chunks + decodes)
    max_num_seqs: int = 256  # most requests in one step
    chunked_prefill: bool = True  # split long prompts over steps; off: a prompt runs whole
    max_prefill_chunk: int | None = None  # a fixed chunk cap (sarathi); None: the token budget
    admission_control: bool = False  # reject late requests whose class says `late: reject`
    max_gap_factor: float = 1.5  # hyperflexis: a step never exceeds this many TPOTs of a decode
    max_step_s: float = 0.5  # hyperflexis: longest step it plans
    target_step_s: float = 0.2  # hyperflexis: step time budget of a prefill-only batch
    tpot_margin: float = DEFAULT_TPOT_MARGIN  # hyperflexis: plan decodes' deadlines early
    prefill_rate_margin: float = DEFAULT_PREFILL_RATE_MARGIN  # hyperflexis: plan prefill slower

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"invalid scheduler field 'role': {self.role!r}; known: {ROLES}")
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid scheduler field {name!r}: must be >= 1")
        if self.max_prefill_chunk is not None and self.max_prefill_chunk < 1:
            raise ValueError("invalid scheduler field 'max_prefill_chunk': must be >= 1 or None")
        for name in ("max_gap_factor", "max_step_s", "target_step_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"invalid scheduler field {name!r}: must be > 0")
        for name in ("tpot_margin", "prefill_rate_margin"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"invalid scheduler field {name!r}: must be in [0, 1)")
