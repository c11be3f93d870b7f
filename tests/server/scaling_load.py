"""Helpers for the live scaling tests: scripted decisions (`POST /debug/scale`), the instances'
rows and scaling events, and a steady load of a few concurrent streams that records every
output, so a test can compare each with a static run's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.server.live import LiveServer

MAX_TOKENS = 24


def body(
    prompt: str, stream: bool = False, max_tokens: int = MAX_TOKENS, **extra: Any
) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream, **extra}


def complete(
    server: LiveServer, prompt: str, max_tokens: int = MAX_TOKENS, **extra: Any
) -> tuple[str, str]:
    """(text, the instance that took it) of one completion."""
    response = httpx.post(
        f"{server.url}/v1/completions",
        json=body(prompt, max_tokens=max_tokens, **extra),
        headers=server.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"], response.headers["x-hyperflexis-instance"]


def scale(server: LiveServer, kind: str, instance_id: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/debug/scale",
        json={"kind": kind, "instance_id": instance_id, **extra},
        headers=server.headers,
        timeout=30,
    )


def rows(server: LiveServer) -> dict[str, dict[str, Any]]:
    return {str(r["instance_id"]): r for r in server.instances()}


def scaling(server: LiveServer) -> dict[str, Any]:
    """`GET /debug/scaling`: the events so far and the migrations."""
    response = httpx.get(f"{server.url}/debug/scaling", headers=server.headers, timeout=10)
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def stream_text(response: httpx.Response, lines: Iterator[str] | None = None) -> str:
    """The text of a streamed completion (the rest of `lines`, when given); fails on an error
    event."""
    text = []
    for line in response.iter_lines() if lines is None else lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            text.append(chunk["choices"][0]["text"])
    return "".join(text)


@dataclass
class SteadyLoad:
    """`num_streams` clients, each streaming the prompts in turn until stopped."""

    server: LiveServer
    prompts: Sequence[str]
    num_streams: int = 3
    done: list[tuple[str, str]] = field(default_factory=list)  # (prompt, text), in order
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, index: int) -> None:
        turn = index
        with httpx.Client(base_url=self.server.url, headers=self.server.headers) as client:
            while not self._stop.is_set():
                prompt = self.prompts[turn % len(self.prompts)]
                turn += 1
                try:
                    request = body(prompt, stream=True)
                    with client.stream("POST", "/v1/completions", json=request, timeout=60) as r:
                        if r.status_code != 200:
                            self.errors.append(f"{r.status_code}: {r.read()!r}")
                            continue
                        self.done.append((prompt, stream_text(r)))
                except (httpx.HTTPError, AssertionError) as error:
                    self.errors.append(repr(error))

    @contextmanager
    def running(self) -> Iterator[SteadyLoad]:
        threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.num_streams)
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(90)
            assert not any(t.is_alive() for t in threads), "a load client hung"
