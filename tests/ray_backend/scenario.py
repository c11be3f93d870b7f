"""The Ray backend's live scenario, run by tests/ray_backend/test_ray_backend.py inside a
loopback-only network namespace (`python -m tests.ray_backend.scenario MODEL PROFILE TEMP OUT`).

On a two-node cluster (`hyperflexis.bench.ray_cluster`) it runs a local-backend server (the
reference outputs, while the cluster starts), then at once a Ray P/D server with P on node1 and D
on node2 and a Ray collocated server that is killed into, scaled out and in under load. It
records what it saw as JSON for the test to assert; it asserts nothing itself, and it always
stops its servers and its cluster.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from hyperflexis.bench.ray_cluster import ADDRESS, start_cluster, stop_cluster
from tests.server.live import LiveServer, start_server, stop_server, wait_idle, wait_until

PROMPTS = ["The children ran along the beach", "Every morning the fishermen", "A short history"]
MAX_TOKENS = 16
LONG_TOKENS = 96  # the requests in flight when an actor is killed or an instance scaled
PLACEMENT = {"prefill": {"node1": 1}, "decode": {"node2": 1}, "mixed-9": {"no-such-node": 1}}


def _body(prompt: str, stream: bool, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    return {**body, "ignore_eos": True}


def _complete(server: LiveServer, prompt: str, stream: bool, max_tokens: int = MAX_TOKENS) -> str:
    """The completion's text (its stream's text joined); `!STATUS body` on a failure."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        body = _body(prompt, stream, max_tokens)
        with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return f"!{response.status_code} {response.read().decode()[:300]}"
            if not stream:
                return str(json.loads(response.read())["choices"][0]["text"])
            return _stream_text(response)


def _stream_text(response: httpx.Response) -> str:
    text = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            choices = json.loads(line[6:]).get("choices") or [{}]
            text.append(choices[0].get("text") or "")
    return "".join(text)


def _outputs(server: LiveServer) -> dict[str, dict[str, str]]:
    return {
        p: {"text": _complete(server, p, False), "stream": _complete(server, p, True)}
        for p in PROMPTS
    }


@contextlib.contextmanager
def _server(work: Path, name: str, args: list[str]) -> Iterator[LiveServer]:
    folder = work / name
    folder.mkdir()
    live = start_server(args, folder)
    try:
        yield live
    finally:
        stop_server(live.process)


def _metric(server: LiveServer, name: str) -> float:
    return server.metric(name)


def _pd(work: Path, common: list[str]) -> dict[str, Any]:
    args = [
        *common,
        "--backend",
        "ray",
        "--ray-address",
        ADDRESS,
        "--prefill",
        "1",
        "--decode",
        "1",
    ]
    args += ["--ray-resources", json.dumps(PLACEMENT)]
    with _server(work, "pd", args) as live:
        outputs = _outputs(live)
        return {
            "outputs": outputs,
            "rows": live.instances(),
            "idle_rows": wait_idle(live),
            "num_transfers": _metric(live, "hyperflexis:kv_transfer_seconds_count"),
            "num_recomputes": _metric(live, "hyperflexis:kv_handoff_recomputes_total"),
        }


def _rows(live: LiveServer) -> dict[str, dict[str, Any]]:
    return {str(r["instance_id"]): r for r in live.instances()}


def _scale(live: LiveServer, kind: str, instance_id: str) -> int:
    body = {"kind": kind, "instance_id": instance_id}
    return httpx.post(f"{live.url}/debug/scale", json=body, timeout=30).status_code


def _kill_actor(live: LiveServer, instance_id: str) -> None:
    """`ray.kill` the instance's actor (this process is a Ray driver by then)."""
    import ray

    actor_name = _rows(live)[instance_id]["where"]["actor"]
    ray.kill(ray.get_actor(actor_name, namespace="hyperflexis"), no_restart=True)


def _under_load(live: LiveServer, action: Any) -> tuple[list[str], Any]:
    """Long completions in flight (streaming and not) while `action()` runs; their texts."""
    jobs = [(p, i % 2 == 0) for i, p in enumerate(PROMPTS * 2)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(_complete, live, p, s, LONG_TOKENS) for p, s in jobs]
        wait_until(lambda: live.stats()["num_open_requests"] >= len(jobs), "requests open")
        result = action()
        return [f.result(timeout=180) for f in futures], result


def _collocated(work: Path, common: list[str], found: dict[str, Any]) -> None:
    """Into `found` as it goes (what came before a failure is kept)."""
    args = [*common, "--backend", "ray", "--ray-address", ADDRESS, "--instances", "2"]
    args += ["--dispatch", "round-robin"]
    args += ["--scaler", "static", "--min-instances", "1", "--max-instances", "4"]
    args += ["--control-interval", "0.2", "--ray-resources", json.dumps(PLACEMENT)]
    with _server(work, "collocated", args) as live, _driver():
        found["outputs"] = _outputs(live)
        found["long"] = {p: _complete(live, p, False, LONG_TOKENS) for p in PROMPTS}
        found["killed_texts"], _ = _under_load(live, lambda: _kill_actor(live, "instance-0"))
        wait_until(lambda: _rows(live)["instance-0"]["alive"], "instance-0 replaced", 120)
        found["after_kill"] = _rows(live)["instance-0"]
        texts, status = _under_load(live, lambda: _scale(live, "scale_out", "instance-2"))
        found["scale_out"] = {"status": status, "texts": texts}
        wait_until(lambda: _rows(live)["instance-2"]["state"] == "active", "instance-2 up", 120)
        texts, status = _under_load(live, lambda: _scale(live, "scale_in", "instance-1"))
        found["scale_in"] = {"status": status, "texts": texts}
        wait_until(lambda: "instance-1" not in _rows(live), "instance-1 stopped", 60)
        retired = lambda: not any("instance-1" in n for n in _actors_alive())  # noqa: E731
        wait_until(retired, "instance-1's actor freed", 10)  # not held until the server stops
        found["unplaceable_status"] = _scale(live, "scale_out", "mixed-9")
        time.sleep(0.5)  # the backend asks the autoscaler when it creates the actor
        found["unplaceable"] = _rows(live)["mixed-9"]
        found["events"] = httpx.get(f"{live.url}/debug/scaling", timeout=10).json()["events"]
        found["idle_rows"] = wait_idle(live)
        found["stderr_autoscaler"] = "asking the autoscaler" in live.stderr()
        found["recovery_log"] = [x for x in live.stderr().splitlines() if "failed (" in x]


@contextlib.contextmanager
def _driver() -> Iterator[None]:
    """This process as a Ray driver of the cluster (to kill and list actors)."""
    import ray

    ray.init(address=ADDRESS, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _actors_alive() -> list[str]:
    import ray

    return [str(a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)]


def main(model: str, profile: str, temp_dir: str, out: str) -> None:
    work = Path(temp_dir) / "work"
    work.mkdir(parents=True)
    common = ["--model", model, "--profile", profile, "--instance-timeout-s", "20"]
    found: dict[str, Any] = {}
    started = time.monotonic()
    try:
        _reference(work, common, Path(temp_dir) / "ray", found)
        found["reference_s"] = time.monotonic() - started
        found["collocated"] = {}
        with ThreadPoolExecutor(1) as pool:  # two servers at once: their starts overlap
            pd = pool.submit(_pd, work, common)
            _collocated(work, common, found["collocated"])
            found["collocated_s"] = time.monotonic() - started
            found["pd"] = pd.result()
        with _driver():
            found["actors_left"] = _actors_alive()  # both servers stopped
    except Exception as exc:  # recorded for the test to show, after the cluster is stopped
        found["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        stop_cluster()
        found["total_s"] = time.monotonic() - started
        Path(out).write_text(json.dumps(found, indent=1))


def _reference(work: Path, common: list[str], ray_dir: Path, found: dict[str, Any]) -> None:
    """The local backend's outputs, while the cluster starts."""
    with ThreadPoolExecutor(1) as pool:
        cluster = pool.submit(start_cluster, ray_dir)
        try:
            with _server(work, "local", [*common, "--instances", "1"]) as local:
                found["local"] = _outputs(local)
                found["local_long"] = {p: _complete(local, p, False, LONG_TOKENS) for p in PROMPTS}
        finally:
            cluster.result()


if __name__ == "__main__":
    main(*sys.argv[1:5])
