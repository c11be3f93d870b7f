"""A bounded soak: `hyperflexis serve` (2 instances of the built-in tiny model) under steady
streaming load at ~80% of its capacity, with a fault injected every `--fault-every-s` seconds, in
turn: an instance SIGKILLed, an instance SIGSTOPped (the server must notice the silence, kill it
and replace it), a burst of clients that disconnect after their first token, and large bodies
(just under the body limit) from several clients at once.

Capacity is measured first: `--calibrate-s` of closed-loop load at growing concurrency gives the
best completed requests per second; the soak's open-loop Poisson rate is `--load` (0.8) times it.
A request is *lost* when it gets no well-formed answer (a connection error, or a stream that ends
without [DONE]); an explicit error (a 503, or an error event and [DONE]) is counted apart. A
request *attains* when it completes with TTFT <= `--ttft-ms` and mean TPOT <= `--tpot-ms`. A
fault window runs from the injection until /health is "ok" again (at least `--window-s`); a
request is inside one when it ran during it. Printed: requests lost (target 0), explicit
errors, attainment and p99 latency inside and outside fault windows, time to recover full
capacity after each fault, and whether the server ended quiescent (no request open, every KV
block free).

    nice .venv/bin/python benchmarks/soak.py [--minutes 10] [--fault-every-s 60] [--out soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm

PROMPT_TEXT = "the fishermen went out every morning and came back with nets full of fish"
PROMPT_WORDS = PROMPT_TEXT.split(" ")
FAULTS = ("sigkill", "sigstop", "disconnects", "large-bodies")
LARGE_BODY_BYTES = 7 * 2**20  # under the default 8 MiB limit: parsed and checked, then a 400


@dataclass
class Result:
    sent_s: float  # since the soak began
    end_s: float = 0.0  # when it ended, on the same clock
    ok: bool = False  # completed
    explicit_error: bool = False  # a 503 or an error event and [DONE]
    ttft_s: float | None = None
    e2e_s: float | None = None

    @property
    def lost(self) -> bool:
        return not (self.ok or self.explicit_error)


@dataclass
class Fault:
    kind: str
    at_s: float
    recovered_s: float | None = None  # seconds until /health was "ok" again


@dataclass
class Soak:
    url: str
    max_tokens: int
    start: float = field(default_factory=time.monotonic)
    results: list[Result] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.start


def _body(rng: random.Random, max_tokens: int) -> dict[str, Any]:
    words = " ".join(rng.choice(PROMPT_WORDS) for _ in range(rng.randint(8, 64)))
    return {
        "prompt": words,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }


async def one_request(client: httpx.AsyncClient, soak: Soak, body: dict[str, Any]) -> Result:
    result = Result(soak.now())
    started = time.monotonic()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                payload = json.loads(await response.aread())
                result.explicit_error = "error" in payload
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    result.ok = result.ok and not result.explicit_error
                    result.e2e_s = time.monotonic() - started
                    return result
                event = json.loads(data)
                if "error" in event:
                    result.explicit_error = True
                    continue
                for choice in event.get("choices", []):
                    if choice.get("text") and result.ttft_s is None:
                        result.ttft_s = time.monotonic() - started
                    result.ok = result.ok or choice.get("finish_reason") == "length"
    except (httpx.HTTPError, ValueError):
        pass
    result.ok = False  # no [DONE]: lost unless it was an explicit error
    return result


async def timed_request(client: httpx.AsyncClient, soak: Soak, body: dict[str, Any]) -> Result:
    result = await one_request(client, soak, body)
    result.end_s = soak.now()
    return result


async def calibrate(url: str, seconds: float, max_tokens: int) -> float:
    """Best completed requests per second over closed-loop concurrency 2, 4, 8, 16."""
    best = 0.0
    soak = Soak(url, max_tokens)
    rng = random.Random(1)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for concurrency in (2, 4, 8, 16):
            deadline = time.monotonic() + seconds / 4
            done = 0

            async def worker(deadline: float = deadline) -> int:
                count = 0
                while time.monotonic() < deadline:
                    count += (await one_request(client, soak, _body(rng, max_tokens))).ok
                return count

            begin = time.monotonic()
            done = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
            best = max(best, done / (time.monotonic() - begin))
    return best


def instance_pids(server_pid: int) -> dict[str, int]:
    """The server's instance processes (its process group; they name themselves hf:<id>)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if comm.startswith("hf:") and int(stat[2]) == server_pid and stat[0] not in "ZX":
            found[comm.removeprefix("hf:")] = int(entry.name)
    return found


async def wait_health(client: httpx.AsyncClient, ok: bool, timeout_s: float = 120.0) -> bool:
    """Wait until /health is "ok" (or, with `ok` False, until it is not)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ((await client.get("/health")).json()["status"] == "ok") == ok:
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.05)
    return False


async def inject(kind: str, client: httpx.AsyncClient, soak: Soak, server_pid: int) -> Fault:
    fault = Fault(kind, soak.now())
    rng = random.Random(len(soak.faults))
    if kind in ("sigkill", "sigstop"):
        pids = instance_pids(server_pid)
        victim = rng.choice(sorted(pids))
        os.kill(pids[victim], signal.SIGKILL if kind == "sigkill" else signal.SIGSTOP)
        await wait_health(client, ok=False, timeout_s=30)  # once the server notices
    elif kind == "disconnects":
        await asyncio.gather(*(_disconnect(client, rng, soak.max_tokens) for _ in range(50)))
    else:
        body = json.dumps({"prompt": "word " * (LARGE_BODY_BYTES // 5 - 20)}).encode()
        posts = [client.post("/v1/completions", content=body) for _ in range(4)]
        await asyncio.gather(*posts, return_exceptions=True)
    if await wait_health(client, ok=True):
        fault.recovered_s = soak.now() - fault.at_s
    return fault


async def _disconnect(client: httpx.AsyncClient, rng: random.Random, max_tokens: int) -> None:
    try:
        async with client.stream("POST", "/v1/completions", json=_body(rng, max_tokens)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    return  # closing the stream here is the client going away
    except httpx.HTTPError:
        pass


async def run_soak(
    url: str, server_pid: int, rate: float, seconds: float, args: argparse.Namespace
) -> Soak:
    soak = Soak(url, args.max_tokens)
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        tasks: list[asyncio.Task[Result]] = []
        next_fault_s = args.fault_every_s / 2
        fault_tasks: list[asyncio.Task[Fault]] = []
        while soak.now() < seconds:
            if soak.now() >= next_fault_s:
                kind = FAULTS[len(fault_tasks) % len(FAULTS)]
                fault_tasks.append(asyncio.create_task(inject(kind, client, soak, server_pid)))
                next_fault_s += args.fault_every_s
            body = _body(rng, soak.max_tokens)
            tasks.append(asyncio.create_task(timed_request(client, soak, body)))
            await asyncio.sleep(rng.expovariate(rate))
        soak.results = list(await asyncio.gather(*tasks))
        soak.faults = list(await asyncio.gather(*fault_tasks))
    return soak


def summarize(soak: Soak, args: argparse.Namespace) -> dict[str, Any]:
    windows = [
        (f.at_s, f.at_s + (f.recovered_s if f.recovered_s is not None else args.window_s))
        for f in soak.faults
    ]
    windows = [(a, max(b, a + args.window_s)) for a, b in windows]

    def in_window(r: Result) -> bool:  # it ran during one
        return any(r.sent_s <= b and r.end_s >= a for a, b in windows)

    def part(results: list[Result]) -> dict[str, Any]:
        done = [r for r in results if r.ok and r.ttft_s is not None and r.e2e_s is not None]
        attained = [
            r
            for r in done
            if r.ttft_s is not None
            and r.e2e_s is not None
            and r.ttft_s <= args.ttft_ms / 1000
            and (r.e2e_s - r.ttft_s) / max(1, args.max_tokens - 1) <= args.tpot_ms / 1000
        ]
        e2e = sorted(r.e2e_s for r in done if r.e2e_s is not None)
        return {
            "requests": len(results),
            "lost": sum(r.lost for r in results),
            "explicit_errors": sum(r.explicit_error for r in results),
            "attainment": len(attained) / len(results) if results else None,
            "p99_e2e_s": e2e[min(len(e2e) - 1, int(0.99 * len(e2e)))] if e2e else None,
            "p50_e2e_s": statistics.median(e2e) if e2e else None,
        }

    inside = [r for r in soak.results if in_window(r)]
    outside = [r for r in soak.results if not in_window(r)]
    return {
        "lost": sum(r.lost for r in soak.results),
        "inside_fault_windows": part(inside),
        "outside_fault_windows": part(outside),
        "faults": [asdict(f) for f in soak.faults],
    }


def quiescent(url: str) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/debug/stats", timeout=10).json()
        rows = httpx.get(f"{url}/debug/instances", timeout=10).json()
        if stats["num_open_requests"] == 0 and all(
            r["alive"] and r["num_free_blocks"] == r["num_blocks"] for r in rows
        ):
            return True
        time.sleep(0.2)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fault-every-s", type=float, default=60.0)
    parser.add_argument("--window-s", type=float, default=10.0, help="least fault window")
    parser.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    parser.add_argument("--calibrate-s", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=None, help="req/s (skips calibration)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ttft-ms", type=float, default=2000.0)
    parser.add_argument("--tpot-ms", type=float, default=200.0)
    parser.add_argument("--instance-timeout-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    serve_args = ["--instances", "2", "--instance-timeout-s", str(args.instance_timeout_s)]
    serve_args += ["--max-restarts", "100"]  # a fault a minute for the whole soak
    with ServerProcess(serve_args, ready_timeout_s=300) as server:
        capacity = None
        rate = args.rate
        if rate is None:
            capacity = asyncio.run(calibrate(server.url, args.calibrate_s, args.max_tokens))
            rate = args.load * capacity
        print(f"capacity {capacity} req/s; soak at {rate:.2f} req/s for {args.minutes} min")
        soak = asyncio.run(run_soak(server.url, server.pid, rate, args.minutes * 60, args))
        summary = {"capacity_rps": capacity, "rate_rps": rate, **summarize(soak, args)}
        summary["quiescent"] = quiescent(server.url)
    print(json.dumps(summary, indent=2))
    for fault in soak.faults:
        print(
            f"fault {fault.kind:13s} at {fault.at_s:6.1f} s: full capacity after "
            f"{fault.recovered_s} s"
        )
    print(f"requests lost: {summary['lost']} (target 0); quiescent: {summary['quiescent']}")
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
