"""Role flips in place against starting a new instance, live (issue 15, items 4 and 5).

A P/D server (`serve --prefill 2 --decode 1 --scaler static`, the built-in model unless
`--model`) serves a steady load of `--streams` concurrent greedy streams. The script flips one
instance back and forth between prefill and decode (`POST /debug/scale` role_switch, 2P+1D <->
1P+2D) `--flips` times, each with a drain deadline of `--drain-deadline-s` (0: a decode
instance's streams migrate at once, KV and all), then scales out one decode instance (weights
from a live peer) and in again. It prints the flip time (decision to serving in the new role,
`flip_s` of each "flipped" event) against the start-up of a new instance (decision to ready), the
migrations, and checks every output of the load against the one a static run gave.

    PYTHONPATH=src nice .venv/bin/python benchmarks/role_flip.py [--flips 6] [--streams 3]
        [--drain-deadline-s 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import httpx

from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm

KEY = {"Authorization": "Bearer sk-bench"}
PROMPTS = [f"the role flip benchmark {i} says" for i in range(6)]


def _body(prompt: str, stream: bool) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": 32, "temperature": 0, "stream": stream}


def _stream(client: httpx.Client, prompt: str) -> str:
    text = []
    with client.stream("POST", "/v1/completions", json=_body(prompt, True)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                text.append(chunk["choices"][0]["text"])
    return "".join(text)


def _load(url: str, index: int, stop: threading.Event, done: list[tuple[str, str]]) -> None:
    with httpx.Client(base_url=url, headers=KEY, timeout=120) as client:
        turn = index
        while not stop.is_set():
            prompt = PROMPTS[turn % len(PROMPTS)]
            turn += 1
            done.append((prompt, _stream(client, prompt)))


def _scale(client: httpx.Client, **body: Any) -> None:
    response = client.post("/debug/scale", json=body)
    if response.status_code != 200:
        raise RuntimeError(response.text)


def _wait_event(client: httpx.Client, instance_id: str, event: str, after: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = client.get("/debug/scaling").json()["events"][after:]
        found = [e for e in events if (e["instance_id"], e["event"]) == (instance_id, event)]
        if found:
            return dict(found[0])
        time.sleep(0.01)
    raise RuntimeError(f"no {event} of {instance_id} within 120 s")


def _run(client: httpx.Client, flips: int, deadline_s: float) -> dict[str, Any]:
    flip_s, roles = [], {"prefill-1": "prefill"}
    for _ in range(flips):
        after = len(client.get("/debug/scaling").json()["events"])
        _scale(client, kind="role_switch", instance_id="prefill-1", drain_deadline_s=deadline_s)
        flip_s.append(_wait_event(client, "prefill-1", "flipped", after)["flip_s"])
        roles["prefill-1"] = "decode" if roles["prefill-1"] == "prefill" else "prefill"
        time.sleep(0.5)  # the new role takes traffic for a while
    after = len(client.get("/debug/scaling").json()["events"])
    _scale(client, kind="scale_out", instance_id="decode-9", role="decode")
    started = _wait_event(client, "decode-9", "scale_out", after)["time_s"]
    start_s = _wait_event(client, "decode-9", "ready", after)["time_s"] - started
    _scale(client, kind="scale_in", instance_id="decode-9", drain_deadline_s=deadline_s)
    _wait_event(client, "decode-9", "stop", after)
    return {"flip_s": flip_s, "start_s": start_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--flips", type=int, default=6)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--drain-deadline-s", type=float, default=0.0)
    args = parser.parse_args()
    exit_on_sigterm()
    serve = ["--prefill", "2", "--decode", "1", "--scaler", "static", "--peer-weights"]
    serve += ["--min-instances", "1", "--max-instances", "3", "--control-interval", "0.1"]
    serve += ["--api-key", "sk-bench", "--dispatch", "round-robin"]
    serve += [] if args.model is None else ["--model", args.model]
    with (
        ServerProcess(serve, ready_timeout_s=300) as server,
        httpx.Client(base_url=server.url, headers=KEY, timeout=60) as client,
    ):
        static = {p: _stream(client, p) for p in PROMPTS}
        stop, done = threading.Event(), []  # type: ignore[var-annotated]
        threads = [
            threading.Thread(target=_load, args=(server.url, i, stop, done), daemon=True)
            for i in range(args.streams)
        ]
        for thread in threads:
            thread.start()
        try:
            result = _run(client, args.flips, args.drain_deadline_s)
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
        migrations = client.get("/debug/scaling").json()["num_migrations"]
    wrong = sum(1 for prompt, text in done if text != static[prompt])
    flip = statistics.median(result["flip_s"])
    print(f"role flips: {len(result['flip_s'])}, drain deadline {args.drain_deadline_s} s")
    print(f"flip time (decision to serving in the new role): median {flip * 1e3:.1f} ms, "
          f"each {[round(s * 1e3, 1) for s in result['flip_s']]} ms")  # fmt: skip
    print(f"new decode instance (weights from a live peer), decision to ready: "
          f"{result['start_s'] * 1e3:.0f} ms")  # fmt: skip
    print(f"ratio: a flip is {result['start_s'] / flip:.1f}x faster than starting an instance")
    print(f"migrations: {migrations}; load: {len(done)} streams, {wrong} differ from static")


if __name__ == "__main__":
    main()
