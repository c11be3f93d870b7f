"""`shed_order` (issue 18, item 12): at a predicted TTFT miss the feasibility check sets late the
least important request (`priority`, DESIGN.md §4.3) or the one with the most prefill work
whatever its class (`work`: Moore-Hodgson's rule, the most requests on time); either way the
late set is then served most important first."""

from __future__ import annotations

import pytest

from hyperflexis.scheduler.config import InvalidSchedulerField, SchedulerConfig
from tests.scheduler.helpers import make, request, run_until_done

# (prompt tokens, priority), all due 0.1 s after arriving together; ~49k tokens/s (the helpers'
# linear model, margin 0) prefills 4,900 of their 9,000 tokens in time.
JOBS = {"a": (3000, 0), "b": (2000, 2), "c": (1500, 1), "d": (2500, 1)}


@pytest.mark.parametrize(
    ("order", "served"),
    [
        # a and c are kept (the least important, d then b, go late); late: d (p1) before b (p2)
        ("priority", ["a", "c", "d", "b"]),
        # the most work goes late (a, then d): b and c are on time (EDF; a tie goes by arrival,
        # not class); late: a (p0) before d (p1)
        ("work", ["b", "c", "a", "d"]),
    ],
)
def test_who_goes_late_and_in_what_order(order: str, served: list[str]) -> None:
    scheduler = make(max_num_batched_tokens=16384, prefill_rate_margin=0.0, shed_order=order)
    for name, (prompt_len, priority) in JOBS.items():
        scheduler.add_request(request(name, prompt_len, ttft_s=0.1, tpot_s=1.0, priority=priority))
    output = scheduler.schedule(0.0)
    assert [c.request_id for c in output.chunks] == served
    # The feasible ones are whole in the step; the late ones get what the step has left.
    for name in served[:2]:
        assert next(c for c in output.chunks if c.request_id == name).num_tokens == JOBS[name][0]


def test_work_order_keeps_more_requests_on_time() -> None:
    """One big important prompt against four small unimportant ones, all due together, with
    time for 9,400 of their 12,000 tokens: the priority order keeps the big one and sheds
    small ones, the work order sheds the big one and keeps the four."""
    attained = {}
    for order in ("priority", "work"):
        scheduler = make(max_num_batched_tokens=4096, prefill_rate_margin=0.0, shed_order=order)
        reqs = [request("big", 6000, output_len=2, ttft_s=0.2, priority=0)]
        reqs += [request(f"s{i}", 1500, output_len=2, ttft_s=0.2, priority=2) for i in range(4)]
        finished = run_until_done(scheduler, reqs)
        attained[order] = sorted(r.request_id for r in finished if r.attained)
        assert len(finished) == len(reqs)
        assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
    assert "big" in attained["priority"]
    assert len(attained["priority"]) <= 3
    assert attained["work"] == ["s0", "s1", "s2", "s3"]


def test_shed_order_is_checked() -> None:
    assert SchedulerConfig().shed_order == "priority"  # DESIGN.md §4.3 by default
    with pytest.raises(InvalidSchedulerField):
        SchedulerConfig(shed_order="size")
