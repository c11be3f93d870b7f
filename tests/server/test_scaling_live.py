"""`serve --scaler` live, collocated: a scale-out and a scale-in under load lose no request and
change no output (temperature 0), a new instance takes no traffic before it is ready, a pool
never drops below its minimum, and every KV block is free afterwards.

The decisions are scripted through `POST /debug/scale` (behind the API key), which applies them
through the same path as the scaler's (`LiveScaler.apply`): the `static` scaler decides nothing
by itself, so what happens, and when, is the test's, not the load's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.live import LiveServer, start_server, stop_server, wait_idle, wait_until

API_KEY = "sk-scale"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPTS = [f"the scaling test {i} says" for i in range(4)]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    live = start_server(
        [
            "--instances",
            "1",
            "--model",
            str(server_model_dir),
            "--profile",
            str(fixed_profile),
            "--api-key",
            API_KEY,
            "--scaler",
            "static",
            "--min-instances",
            "1",
            "--max-instances",
            "2",
            "--control-interval",
            "0.2",
            "--peer-weights",
            # Round-robin: the streams below alternate over both instances whatever their load
            # (the hyperflexis dispatcher may send all of them to the idle newcomer).
            "--dispatch",
            "round-robin",
        ],
        tmp_path_factory.mktemp("scaling-server"),
    )
    yield live
    stop_server(live.process)


def _body(prompt: str, stream: bool = False) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}


def _complete(server: LiveServer, prompt: str) -> tuple[str, str]:
    """(text, the instance that served it)."""
    response = httpx.post(
        f"{server.url}/v1/completions", json=_body(prompt), headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"], response.headers["x-hyperflexis-instance"]


def _scale(server: LiveServer, kind: str, instance_id: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/debug/scale",
        json={"kind": kind, "instance_id": instance_id},
        headers=AUTH,
        timeout=30,
    )


def _rows(server: LiveServer) -> dict[str, dict[str, Any]]:
    return {str(r["instance_id"]): r for r in server.instances()}


def _stream_text(response: httpx.Response) -> str:
    text = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            text.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(text)


def test_scale_out_and_in_lose_nothing_and_change_no_output(server: LiveServer) -> None:
    static = {p: _complete(server, p)[0] for p in PROMPTS}  # the one-instance run
    assert _scale(server, "scale_out", "instance-1").status_code == 200
    # Until it is ready it is starting, not alive, and nothing is sent to it (its process
    # imports torch for seconds: requests are served meanwhile).
    num_served_while_starting = 0
    while _rows(server)["instance-1"]["state"] == "starting":
        text, served_by = _complete(server, PROMPTS[0])
        row = _rows(server)["instance-1"]
        if row["state"] == "starting":  # still starting after the request was dispatched
            assert served_by == "instance-0" and row["num_dispatched"] == 0
            assert not row["alive"]
            num_served_while_starting += 1
        assert text == static[PROMPTS[0]]
    assert num_served_while_starting > 0
    rows = _rows(server)
    assert rows["instance-1"]["state"] == "active" and rows["instance-1"]["alive"]
    assert rows["instance-1"]["weight_source"] == "peer"  # mapped instance-0's published copy

    # Streams in flight on instance-0 when it is scaled in finish there, whole and unchanged.
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        streams, on_0 = [], []
        for prompt in PROMPTS * 2:
            context = client.stream("POST", "/v1/completions", json=_body(prompt, stream=True))
            response = context.__enter__()
            streams.append((prompt, context, response))
            if response.headers["x-hyperflexis-instance"] == "instance-0":
                on_0.append(prompt)
        assert on_0, "no stream went to instance-0"
        assert _scale(server, "scale_in", "instance-0").status_code == 200
        assert _rows(server).get("instance-0", {"state": "stopped"})["state"] != "active"
        for prompt, context, response in streams:
            assert _stream_text(response) == static[prompt]
            context.__exit__(None, None, None)

    wait_until(lambda: "instance-0" not in _rows(server), "instance-0 stopped once drained")
    for prompt in PROMPTS:  # everything goes to the one that is left, unchanged
        assert _complete(server, prompt) == (static[prompt], "instance-1")
    refused = _scale(server, "scale_in", "instance-1")  # the last one: below --min-instances
    assert refused.status_code == 400 and "minimum" in refused.json()["error"]["message"]
    events = [(e["instance_id"], e["event"]) for e in _events(server)]
    assert events == [
        ("instance-1", "scale_out"),
        ("instance-1", "ready"),
        ("instance-0", "drain"),
        ("instance-0", "stop"),
    ]
    # Its start, decision to serving, is what the scaler now predicts for starts from a peer.
    ready = next(e for e in _events(server) if e["event"] == "ready")
    assert ready["startup_s"] > 0 and "after the decision" in ready["detail"]
    startup = httpx.get(f"{server.url}/debug/scaling", headers=AUTH, timeout=10).json()["startup"]
    assert startup["peer"] == {
        "startup_s": ready["startup_s"],
        "basis": "measured: 1 start from peer",
    }
    assert startup["disk"]["basis"] == "spec"
    rows_left = wait_idle(server)  # every KV block free
    assert [r["instance_id"] for r in rows_left] == ["instance-1"]
    assert "scaling: instance instance-0 stop" in server.stderr()


def _events(server: LiveServer) -> list[dict[str, Any]]:
    """The scaling events so far, from `GET /debug/scaling` (a refused decision adds none)."""
    response = httpx.get(f"{server.url}/debug/scaling", headers=AUTH, timeout=10)
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_bad_scaling_requests_are_openai_shaped_400s(server: LiveServer) -> None:
    for body in ({"kind": "grow"}, {"kind": "scale_out"}, [1]):
        response = httpx.post(f"{server.url}/debug/scale", json=body, headers=AUTH, timeout=10)
        assert response.status_code == 400 and response.json()["error"]["type"]
    unauthorised = httpx.post(f"{server.url}/debug/scale", json={}, timeout=10)
    assert unauthorised.status_code == 401
