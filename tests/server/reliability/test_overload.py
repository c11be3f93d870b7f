"""Backpressure by default (no --max-queued): the queue bound follows capacity (--max-num-seqs
per live instance), and every request is answered within --request-timeout-s: a 200, or a 503
with Retry-After. The instance is frozen while the requests arrive, so which ones queue and
which are refused does not depend on the machine's speed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.live import wait_until
from tests.server.reliability.quiet import Served, assert_quiescent, serve
from tests.server.reliability.sse import Sent

MAX_NUM_SEQS = 2  # the derived queue bound, with one instance
REQUEST_TIMEOUT_S = 3.0
SHORT = {"prompt": "a b c", "max_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("overload-server")
    args = ["--model", str(server_model_dir), "--profile", str(fixed_profile)]
    args += ["--max-num-seqs", str(MAX_NUM_SEQS), "--request-timeout-s", str(REQUEST_TIMEOUT_S)]
    args += ["--instance-timeout-s", "600"]  # frozen on purpose below
    with serve(args, tmp, num_instances=1) as live:
        yield live


def _assert_answered(sent: list[Sent]) -> list[int]:
    statuses = []
    for request in sent:
        outcome = request.result()
        assert outcome.well_formed(), outcome
        assert outcome.elapsed_s < REQUEST_TIMEOUT_S + 2.0, outcome
        assert outcome.status in (200, 503), outcome
        if outcome.status == 503:
            assert outcome.retry_after == "1", outcome
        statuses.append(outcome.status)
    return statuses


def test_a_burst_beyond_the_derived_bound_is_refused_at_once(served: Served) -> None:
    assert_quiescent(served)
    with served.live.frozen():
        sent = [Sent(served.url, {**SHORT, "stream": i % 2 == 1}) for i in range(10)]
        wait_until(
            lambda: sum(r.outcome.first_event.is_set() for r in sent) >= len(sent) - MAX_NUM_SEQS,
            "the requests over the bound to be answered",
        )
        assert served.live.stats()["num_queued"] == MAX_NUM_SEQS
    statuses = _assert_answered(sent)
    assert sorted(statuses) == [200] * MAX_NUM_SEQS + [503] * (len(sent) - MAX_NUM_SEQS)
    assert_quiescent(served)


def test_a_request_past_the_timeout_is_a_503(served: Served) -> None:
    assert_quiescent(served)
    with served.live.frozen():
        sent = [Sent(served.url, {**SHORT, "stream": stream}) for stream in (False, True)]
        outcomes = [request.result(REQUEST_TIMEOUT_S + 10) for request in sent]
    for outcome in outcomes:
        assert outcome.status == 503 and outcome.retry_after == "1", outcome
        assert outcome.error is not None and "timeout" in outcome.error["message"]
        assert REQUEST_TIMEOUT_S <= outcome.elapsed_s < REQUEST_TIMEOUT_S + 2.0, outcome
    assert_quiescent(served)
