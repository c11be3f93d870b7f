"""Instance scheduler settings: one small dataclass, checked on construction.

Fields made with `knob(...)` are the ones a deployment sets: `hyperflexis serve` and
`hyperflexis simulate` give each a flag named after it (`commands/scheduler_flags.py`) and results
files echo it, so a new knob is one field here.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal, TypeVar

Role = Literal["mixed", "prefill", "decode"]
ROLES: tuple[Role, ...] = ("mixed", "prefill", "decode")
# hyperflexis: which request its feasibility check sets late at a predicted miss (DESIGN.md
# §4.3). "priority": the least important, then the most work. "work": the most remaining work
# whatever its class (Moore-Hodgson's rule, which keeps the most requests on time).
SHED_ORDERS = ("priority", "work")
# hyperflexis (issue 18, item 12): by default the check sets late the least important request
# (DESIGN.md §4.3: high-priority work is never made late by lower-priority work). Goodput, which
# counts every request alike, gains from `shed_order` "work" with `oversize_load` 1.0 (each
# instance sets late at once the largest prompts past what its prefill rate serves): chosen on
# tuning seed 1 (1.0 against 0.9 and 1.1), checked on the evaluation seeds, at the cost of the
# interactive class (docs/results.md, "A scheduler near the bound"). An opt-in, not a default.
DEFAULT_SHED_ORDER = "priority"
DEFAULT_OVERSIZE_LOAD = 0.0
# hyperflexis: plan decodes' deadlines this fraction of their TPOT early; held exactly at their
# targets, real step times that scatter around the prediction miss about half of them.
DEFAULT_TPOT_MARGIN = 0.05
# hyperflexis: plan prefill at this fraction below the predicted rate. The feasibility check
# plans the queue as if nothing more urgent arrived; arrivals with earlier deadlines take their
# share of the rate first (DESIGN.md §4.3: estimate the rate conservatively).
DEFAULT_PREFILL_RATE_MARGIN = 0.2
KNOB_HELP = "knob_help"  # field metadata key: the flag's help line

_T = TypeVar("_T")


def knob(default: _T, help_text: str) -> _T:
    """A field set per deployment, with its flag's help line."""
    return field(default=default, metadata={KNOB_HELP: help_text})


class InvalidSchedulerField(ValueError):
    """A `SchedulerConfig` field out of range; `field` names it, so a CLI can name its flag."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid scheduler field {name!r}: {reason}")
        self.field = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    role: Role = "mixed"  # what this instance runs: both phases, prefill only, or decode only
    max_num_batched_tokens: int = knob(
        2048, "token budget of one instance step (prefill chunks + decodes)"
    )
    max_num_seqs: int = 256  # most requests in one step
    chunked_prefill: bool = True  # split long prompts over steps; off: a prompt runs whole
    max_prefill_chunk: int | None = None  # a fixed chunk cap (sarathi); None: the token budget
    admission_control: bool = knob(
        False, "reject requests that can no longer meet their SLO (serve answers 503)"
    )
    max_gap_factor: float = 1.5  # hyperflexis: a step never exceeds this many TPOTs of a decode
    max_step_s: float = 0.5  # hyperflexis: longest step it plans
    target_step_s: float = 0.2  # hyperflexis: step time budget of a prefill-only batch
    tpot_margin: float = knob(
        DEFAULT_TPOT_MARGIN,
        "hyperflexis: plan each decode's deadlines this fraction of its TPOT early, for the "
        "scatter of real step times around the prediction",
    )
    prefill_rate_margin: float = knob(
        DEFAULT_PREFILL_RATE_MARGIN,
        "hyperflexis: plan prefill this fraction below the predicted rate, for arrivals that "
        "will go ahead of the queue",
    )
    late_age_factor: float = knob(
        0.0,
        "hyperflexis: a late request still waiting this many TTFT targets past its "
        "deadline goes ahead of the queue, so its wait is bounded under sustained overload "
        "(0: never; late work waits for capacity no feasible request needs)",
    )
    shed_order: str = knob(
        DEFAULT_SHED_ORDER,
        "hyperflexis: at a predicted TTFT miss set late the least important request "
        "(priority) or the one with the most prefill work, whatever its class (work)",
    )
    oversize_load: float = knob(
        DEFAULT_OVERSIZE_LOAD,
        "hyperflexis: when the prompts that arrived over the last 10 s hold more prefill work "
        "than this share of the instance's prefill rate serves, set the largest late at once "
        "(0: never)",
    )
    # prefill role: a finished prompt's KV stays pinned this long for its decode peer to pull
    kv_lease_s: float = 30.0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidSchedulerField("role", f"{self.role!r}; known: {ROLES}")
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise InvalidSchedulerField(name, "must be >= 1")
        if self.max_prefill_chunk is not None and self.max_prefill_chunk < 1:
            raise InvalidSchedulerField("max_prefill_chunk", "must be >= 1 or None")
        for name in ("max_gap_factor", "max_step_s", "target_step_s", "kv_lease_s"):
            if not getattr(self, name) > 0:
                raise InvalidSchedulerField(name, "must be > 0")
        if self.shed_order not in SHED_ORDERS:
            raise InvalidSchedulerField("shed_order", f"{self.shed_order!r}; known: {SHED_ORDERS}")
        for name in ("late_age_factor", "oversize_load"):
            if not getattr(self, name) >= 0:
                raise InvalidSchedulerField(name, "must be >= 0")
        for name in ("tpot_margin", "prefill_rate_margin"):
            if not 0 <= getattr(self, name) < 1:
                raise InvalidSchedulerField(name, "must be in [0, 1)")

    def knob_values(self) -> dict[str, Any]:
        """The per-deployment fields by name, in declaration order (for results files)."""
        return {f.name: getattr(self, f.name) for f in knob_fields()}


def knob_fields() -> tuple[Field[Any], ...]:
    """The fields a deployment sets, in declaration order."""
    return tuple(f for f in fields(SchedulerConfig) if KNOB_HELP in f.metadata)
