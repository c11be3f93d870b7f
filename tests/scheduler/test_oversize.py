"""`oversize_load` (issue 18, item 12): when the prompts that arrived over the last 10 s hold
more prefill work than the instance serves, the largest waiting ones go late at once."""

from __future__ import annotations

import math

import pytest

from hyperflexis.scheduler.config import InvalidSchedulerField, SchedulerConfig
from hyperflexis.scheduler.oversize import OversizeCut
from tests.scheduler.helpers import make, request


def test_the_cut_keeps_the_smallest_prompts_that_fit() -> None:
    cut = OversizeCut(load=1.0, window_s=10.0)
    for i, size in enumerate([100, 400, 200, 300, 5000]):
        cut.arrived(float(i), size)
    # 10 s at 100 tokens/s hold 1,000 tokens: 100 + 200 + 300 + 400 fit, 5,000 does not.
    assert cut.cut_tokens(10.0, 100.0) == 400
    # Everything fits at 1,000 tokens/s: no cut.
    later = OversizeCut(load=1.0, window_s=10.0)
    later.arrived(0.0, 5000)
    assert math.isinf(later.cut_tokens(10.0, 1000.0))


def test_the_window_forgets_old_arrivals() -> None:
    cut = OversizeCut(load=1.0, window_s=10.0)
    cut.arrived(0.0, 50_000)
    assert cut.cut_tokens(5.0, 100.0) == 0  # 5 s seen: 500 tokens of room, 50,000 arrived
    cut.arrived(15.0, 100)
    assert math.isinf(cut.cut_tokens(20.0, 100.0))  # the big one left the window


def _served_first(load: float) -> str:
    """After 10 s of more prefill work than the instance serves (~47k tokens/s; those requests'
    deadlines have passed, so they are set aside as hopeless), a 6,000-token prompt due first
    and a small one due later: which is served first."""
    scheduler = make(num_blocks=100_000, max_num_batched_tokens=4096, oversize_load=load)
    for i in range(400):  # 60k tokens/s of 1,500-token prompts
        scheduler.add_request(request(f"old{i:03d}", 1500, ttft_s=0.1, arrival_s=i / 42))
    scheduler.add_request(request("big", 6000, ttft_s=0.5, arrival_s=9.9))  # due at 10.4
    scheduler.add_request(request("small", 500, ttft_s=2.0, arrival_s=9.95))  # due at 11.95
    return scheduler.schedule(10.0).chunks[0].request_id


@pytest.mark.parametrize(("load", "first"), [(0.0, "big"), (1.0, "small"), (1.5, "big")])
def test_the_largest_prompt_goes_late_at_once_under_overload(load: float, first: str) -> None:
    # Off (0), EDF serves the big prompt first; at load 1 it is past the cut (the 1,500-token
    # prompts alone fill the rate) and goes late; at 1.5 everything fits under the cut.
    assert _served_first(load) == first


def test_oversize_load_is_checked() -> None:
    assert SchedulerConfig().oversize_load == 0.0  # off by default (DESIGN.md §4.3)
    with pytest.raises(InvalidSchedulerField):
        SchedulerConfig(oversize_load=-0.5)


def test_a_burst_at_start_up_is_not_an_overload() -> None:
    """Less than a second of prefill work arriving at once on a new instance sets nothing late:
    the cut measures over at least `MIN_SPAN_S`."""
    cut = OversizeCut(load=1.0, window_s=10.0)
    for _ in range(20):
        cut.arrived(0.0, 1000)
    cut.arrived(0.0, 4000)
    assert math.isinf(cut.cut_tokens(0.001, 35_000.0))  # 24,000 tokens < 1 s at 35k tokens/s
    assert cut.cut_tokens(0.5, 20_000.0) == 1000  # past a second's work: the big one is cut
