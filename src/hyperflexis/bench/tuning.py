"""Baselines at their best: each baseline policy's own knobs (step token budget, dispatcher,
`max_num_seqs`) searched for the highest goodput@90, so a comparison is against the best setting
of each and not against one shared default.

The search is coordinate descent from a start setting: every budget (others as started), then
every dispatcher at the best budget, then every `max_num_seqs` at the best of both; a setting
replaces the best so far only when its goodput is strictly higher. Each setting's goodput@90 comes
from a rate sweep that stops at the first rate below 90% attainment, which is where
`goodput_at` stops reading. All sweeps of a stage run together, one rate at a time, so a caller's
`evaluate` gets every pending (case, setting, rate) of a round at once and can run them in
parallel.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hyperflexis.bench.metrics import goodput_at
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.sim.deployment import Deployment
from hyperflexis.sim.setup import SimSetup

GOODPUT_TARGET = 0.9
# vLLM's defaults as a deployment gets them: first come first served, its default token budget
# for chunked prefill on large GPUs, and the router's round robin.
VLLM_DEFAULT = ("fcfs", 8192, "round-robin", 256)


@dataclass(frozen=True, slots=True)
class BaselineSetting:
    """One baseline configuration: what the tuner varies."""

    policy: str
    max_num_batched_tokens: int
    dispatch: str
    max_num_seqs: int = 256

    def label(self) -> str:
        return (
            f"{self.policy} ({self.max_num_batched_tokens}, {self.dispatch}, "
            f"seqs {self.max_num_seqs})"
        )

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sim_setup(self, deployment: Deployment, **fields: Any) -> SimSetup:
        """The simulated cluster of this setting on `deployment`; `fields` are more of
        `SimSetup`'s (step noise, say)."""
        config = SchedulerConfig(
            max_num_batched_tokens=self.max_num_batched_tokens, max_num_seqs=self.max_num_seqs
        )
        return SimSetup(
            deployment=deployment,
            policy=self.policy,
            dispatch=self.dispatch,
            scheduler=config,
            **fields,
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BaselineSetting:
        return cls(
            str(doc["policy"]),
            int(doc["max_num_batched_tokens"]),
            str(doc["dispatch"]),
            int(doc["max_num_seqs"]),
        )


def vllm_default() -> BaselineSetting:
    return BaselineSetting(*VLLM_DEFAULT)


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """The values each knob takes; the start setting's values need not be among them."""

    budgets: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    dispatchers: tuple[str, ...] = ("round-robin", "least-loaded")
    max_num_seqs: tuple[int, ...] = (128, 256, 512)

    def __post_init__(self) -> None:
        if not (self.budgets and self.dispatchers and self.max_num_seqs):
            raise ValueError("invalid search space: every knob needs at least one value")


def distserve_budgets(budgets: Sequence[int], longest_prompt: int) -> tuple[int, ...]:
    """DistServe does not chunk, so its budgets start at the longest prompt (plus the first token
    its decode instances receive a request with) and go up from there."""
    least = longest_prompt + 1
    return tuple(sorted({least, *(b for b in budgets if b > least)}))


@dataclass(frozen=True, slots=True)
class TuneCase:
    """One baseline to tune on one deployment: `key` names the deployment to `evaluate`."""

    key: str
    start: BaselineSetting
    space: SearchSpace
    rates: tuple[float, ...]  # ascending

    def __post_init__(self) -> None:
        if not self.rates or list(self.rates) != sorted(set(self.rates)):
            raise ValueError(f"invalid rates {self.rates!r}: need distinct ascending rates")


# A point to evaluate: (case key, setting, rate); `evaluate` returns each one's attainment.
Point = tuple[str, BaselineSetting, float]
Evaluate = Callable[[Sequence[Point]], Sequence[float]]


@dataclass(slots=True)
class TuneResult:
    """A case's best setting and every setting it tried, with their goodput@90 and sweeps."""

    best: BaselineSetting
    goodput: float
    tried: dict[BaselineSetting, float] = field(default_factory=dict)
    sweeps: dict[BaselineSetting, list[tuple[float, float]]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            **self.best.as_json(),
            "goodput_at_90": self.goodput,
            "tried": [
                {**s.as_json(), "goodput_at_90": g, "sweep": self.sweeps[s]}
                for s, g in self.tried.items()
            ],
        }


_S = TypeVar("_S")


def sweep_goodputs(
    sweeps: Sequence[tuple[str, _S, tuple[float, ...]]],
    evaluate: Callable[[Sequence[tuple[str, _S, float]]], Sequence[float]],
) -> list[list[tuple[float, float]]]:
    """Each sweep's (rate, attainment) points, from its lowest rate up to and including its first
    below the goodput target; rounds of one rate per sweep go to `evaluate` together (any
    setting type: the tuner's `BaselineSetting`, `sim_compare.py`'s setups)."""
    points: list[list[tuple[float, float]]] = [[] for _ in sweeps]
    live = list(range(len(sweeps)))
    step = 0
    while live:
        batch = [(sweeps[i][0], sweeps[i][1], sweeps[i][2][step]) for i in live]
        attainments = evaluate(batch)
        if len(attainments) != len(batch):
            raise RuntimeError("evaluate returned a result per point it was not given")
        still = []
        for i, (_, _, rate), attainment in zip(live, batch, attainments, strict=True):
            points[i].append((rate, float(attainment)))
            if attainment >= GOODPUT_TARGET and step + 1 < len(sweeps[i][2]):
                still.append(i)
        live = still
        step += 1
    return points


def _stage_candidates(case: TuneCase, best: BaselineSetting, stage: int) -> list[BaselineSetting]:
    space = case.space
    if stage == 0:
        return [dataclasses.replace(best, max_num_batched_tokens=b) for b in space.budgets]
    if stage == 1:
        return [dataclasses.replace(best, dispatch=d) for d in space.dispatchers]
    return [dataclasses.replace(best, max_num_seqs=n) for n in space.max_num_seqs]


def tune(cases: Sequence[TuneCase], evaluate: Evaluate) -> list[TuneResult]:
    """Each case's best setting by coordinate descent (budget, dispatcher, `max_num_seqs`),
    all cases' sweeps of a stage evaluated together."""
    results = [TuneResult(case.start, -1.0) for case in cases]
    for stage in range(3):
        pending: list[tuple[int, BaselineSetting]] = []
        for index, (case, result) in enumerate(zip(cases, results, strict=True)):
            for setting in _stage_candidates(case, result.best, stage):
                if setting not in result.tried and (index, setting) not in pending:
                    pending.append((index, setting))
        sweeps = [(cases[i].key, s, cases[i].rates) for i, s in pending]
        for (index, setting), points in zip(pending, sweep_goodputs(sweeps, evaluate), strict=True):
            result = results[index]
            goodput = goodput_at(points, GOODPUT_TARGET)
            result.tried[setting] = goodput
            result.sweeps[setting] = points
        for case, result in zip(cases, results, strict=True):
            for setting in _stage_candidates(case, result.best, stage):
                if result.tried[setting] > result.goodput:
                    result.best, result.goodput = setting, result.tried[setting]
    return results


def save_tuned(
    path: Path, trace: str, meta: dict[str, Any], results: dict[str, dict[str, TuneResult]]
) -> None:
    """Write the chosen settings under `trace`'s name (a file stem), keeping other traces'."""
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    doc[trace] = {
        **meta,
        "settings": {
            deployment: {policy: result.as_json() for policy, result in by_policy.items()}
            for deployment, by_policy in results.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def load_tuned(path: Path, trace: str, deployment: str) -> dict[str, BaselineSetting]:
    """Each tuned baseline's best setting for `trace` on `deployment`; empty when the file has
    none for them."""
    if not path.exists():
        return {}
    settings = json.loads(path.read_text()).get(trace, {}).get("settings", {})
    return {
        policy: BaselineSetting.from_json(doc)
        for policy, doc in settings.get(deployment, {}).items()
    }
