"""What the bench client makes of a server's cost counters and scaling events
(`bench.server_info.cost_between`), and of a server that reports none."""

from __future__ import annotations

import pytest

from hyperflexis.bench.server_info import ServerCost, cost_between, server_cost


def _event(time_s: float, instance_id: str, event: str) -> dict[str, object]:
    return {"time_s": time_s, "instance_id": instance_id, "event": event, "detail": ""}


def test_cost_between_is_the_difference_by_pool_and_counts_the_new_events() -> None:
    old = (_event(1.0, "instance-1", "scale_out"), _event(3.0, "instance-1", "ready"))
    before = ServerCost({"mixed": 10.0, "prefill": 0.0}, {"mixed": 0.01, "prefill": 0.0}, old, 1)
    new = (
        _event(9.0, "instance-1", "drain"),
        _event(10.5, "instance-1", "flip"),
        {**_event(11.0, "instance-1", "flipped"), "flip_s": 2.0},
    )
    after = ServerCost(
        {"mixed": 25.0, "prefill": 5.0}, {"mixed": 0.025, "prefill": 0.005}, old + new, 3
    )
    cost = cost_between(before, after)
    assert cost["instance_seconds"] == pytest.approx(20.0)
    assert cost["instance_seconds_by_role"] == pytest.approx({"mixed": 15.0, "prefill": 5.0})
    assert cost["cost_usd"] == pytest.approx(0.02)
    assert cost["scaling_events"] == {"drain": 1, "flip": 1, "flipped": 1}
    assert cost["num_role_flips"] == 1 and cost["flip_s"] == [2.0]
    assert cost["num_migrations"] == 2
    assert cost["events"] == list(new)  # those before the run are not its own


def test_a_server_that_cannot_be_reached_reports_no_cost() -> None:
    assert server_cost("http://127.0.0.1:1", timeout_s=2.0) is None  # nothing listens there
