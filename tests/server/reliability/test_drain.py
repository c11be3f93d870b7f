"""SIGTERM under load: the server stops admitting (503 with Retry-After, /health 503), lets what
can finish within --shutdown-timeout-s finish, ends the rest with well-formed errors (a stream
with an error event and [DONE]), exits 0 and leaves no process behind."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.server.live import is_running, wait_until
from tests.server.reliability.quiet import assert_quiescent, serve
from tests.server.reliability.sse import Sent

SHUTDOWN_TIMEOUT_S = 2.0


def test_sigterm_under_load_ends_every_request_well(
    tmp_path: Path, server_model_dir: Path, fixed_profile: Path
) -> None:
    args = ["--model", str(server_model_dir), "--profile", str(fixed_profile)]
    args += ["--shutdown-timeout-s", str(SHUTDOWN_TIMEOUT_S)]
    with serve(args, tmp_path, num_instances=2) as served:
        assert_quiescent(served)
        short = {"prompt": "a b c", "max_tokens": 4, "ignore_eos": True}
        long = {"prompt": "a b c", "max_tokens": 1900, "ignore_eos": True}  # cannot finish
        bodies = [{**body, "stream": stream} for body in (short, long) for stream in (0, 1)]
        sent = [Sent(served.url, {**body, "stream": bool(body["stream"])}) for body in bodies]
        sent[3].wait_first_event()  # the long stream has streamed
        wait_until(lambda: served.live.stats()["num_queued"] == 0, "every request running")
        children = served.running_descendants()
        served.live.process.send_signal(signal.SIGTERM)
        wait_until(lambda: served.health()[0] == 503, "/health to say draining")
        assert served.health()[1]["status"] == "draining"
        refused = httpx.post(f"{served.url}/v1/completions", json=short, timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "shutting_down"
        outcomes = [request.result() for request in sent]
        assert served.live.process.wait(30) == 0, served.live.stderr()
    for outcome in outcomes:
        assert outcome.well_formed(), outcome
    assert [o.complete for o in outcomes] == [True, True, False, False], outcomes
    long_json, long_stream = outcomes[2:]
    assert long_json.status == 503 and long_json.retry_after == "1", long_json
    assert long_stream.status == 200 and long_stream.done and long_stream.error is not None
    assert long_stream.elapsed_s < SHUTDOWN_TIMEOUT_S + 10.0
    wait_until(lambda: not any(is_running(pid) for pid in children), "no process left", 10.0)
