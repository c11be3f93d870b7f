"""Issue 18, item 11: without admission control, late work is served within a bounded delay.

A scripted sustained overload (20 s of arrivals at a rate past what the budgeted prefill rate
serves on time; half interactive, half batch with `late: serve`): without ageing, late batch
work waits for capacity no feasible request needs, and its wait grows with the overload; with
`late_age_factor` f, no request's first token comes later than (1 + f) TTFT targets after its
arrival plus a few steps of aged work ahead of it (docs/architecture.md: how the bound is set).
"""

from __future__ import annotations

import pytest

from hyperflexis.core import Request
from hyperflexis.scheduler.config import InvalidSchedulerField, SchedulerConfig
from tests.scheduler.helpers import make, request, step

RATE = 135.0  # requests/s; ~110 are served on time at the budgeted rate
SECONDS = 20.0
BATCH_TTFT_S = 1.0
STEPS_OF_AGED_WORK_S = 0.25  # the aged work ahead of a request: a few steps at most here


def _overload(factor: float) -> list[Request]:
    scheduler = make(num_blocks=20_000, max_num_batched_tokens=1024, late_age_factor=factor)
    requests = []
    for i in range(int(RATE * SECONDS)):
        interactive = i % 2 == 0
        requests.append(
            request(
                f"r{i:05d}",
                200 if interactive else 400,
                output_len=4,
                ttft_s=0.3 if interactive else BATCH_TTFT_S,
                tpot_s=0.05 if interactive else 0.2,
                priority=0 if interactive else 2,
                arrival_s=i / RATE,
            )
        )
    pending, now = list(requests), 0.0
    while pending or scheduler.has_unfinished():
        while pending and pending[0].arrival_s <= now:
            scheduler.add_request(pending.pop(0))
        now, _ = step(scheduler, now)
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
    assert all(r.first_token_s is not None for r in requests)
    return requests


def _worst_wait_s(requests: list[Request], priority: int) -> float:
    waits = [r.first_token_s - r.arrival_s for r in requests if r.slo.priority == priority]  # type: ignore[operator]
    return max(waits)


def test_late_work_waits_at_most_the_bound() -> None:
    factor = 1.0
    bound_s = (1 + factor) * BATCH_TTFT_S + STEPS_OF_AGED_WORK_S
    starved = _overload(0.0)
    # The overload is sustained: without ageing late batch work waits far past the bound.
    assert _worst_wait_s(starved, 2) > 2 * bound_s
    aged = _overload(factor)
    assert _worst_wait_s(aged, 2) <= bound_s
    assert _worst_wait_s(aged, 0) <= (1 + factor) * 0.3 + STEPS_OF_AGED_WORK_S


def test_late_age_factor_is_checked() -> None:
    with pytest.raises(InvalidSchedulerField):
        SchedulerConfig(late_age_factor=-1.0)
