"""The `hyperflexis` policy with one of its parts off, so a comparison shows what each part buys
(issue 18's ablation). Each is registered beside it and runs with its dispatcher; the fourth
part, SLO-aware dispatch, is the dispatcher's and is ablated by naming another one.

- `hyperflexis-no-budget`: no budget estimation (DESIGN.md §4.2). Prefill chunks fill the step's
  token budget whatever its time; the decodes' deadlines no longer size the step.
- `hyperflexis-no-prioritise`: the feasibility check (§4.3) is blind to priority. At a predicted
  miss it sets aside the job with the most remaining work at or before it (the count-maximising
  choice), not the least important one.
- `hyperflexis-no-shed`: no late set. Every waiting request is served in EDF order with the
  whole step budget, hopeless ones included, and none is rejected.
"""

from __future__ import annotations

import math

from hyperflexis.core.request import Request
from hyperflexis.scheduler.policies.hyperflexis import HyperFlexisScheduler, _Decodes
from hyperflexis.scheduler.registry import register_policy


@register_policy
class NoBudgetScheduler(HyperFlexisScheduler):
    name = "hyperflexis-no-budget"

    def _prefill_budget_s(self, budget_s: float) -> float:
        return math.inf


@register_policy
class NoPrioritiseScheduler(HyperFlexisScheduler):
    name = "hyperflexis-no-prioritise"
    _sets_aside_hopeless = False  # its late set is ordered by deadline alone
    # Every job at one priority: the check then sets aside the most work first.
    _priority_blind = True


@register_policy
class NoShedScheduler(HyperFlexisScheduler):
    name = "hyperflexis-no-shed"
    _sets_aside_hopeless = False  # it has no late set

    def _prioritise(
        self, candidates: list[Request], decodes: _Decodes, waiting_tpot_s: float, now: float
    ) -> tuple[list[Request], list[Request]]:
        return sorted(candidates, key=lambda r: r.next_token_deadline_s), []
