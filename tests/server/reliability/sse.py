"""A client for the reliability cases: one request on a thread of its own, streamed or not, and
what came back (status, text, tokens, the error, whether a stream ended with [DONE])."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Outcome:
    status: int = 0
    text: str = ""
    finish_reason: str | None = None
    num_completion_tokens: int | None = None
    error: dict[str, Any] | None = None  # the OpenAI error body's "error"
    done: bool = False  # a stream's [DONE]
    retry_after: str | None = None
    elapsed_s: float = 0.0
    exception: str | None = None  # the connection failed: a lost request
    first_event: threading.Event = field(default_factory=threading.Event)

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.error is None and self.finish_reason is not None

    def well_formed(self) -> bool:
        """A completion, or an error in OpenAI's shape (and, in a stream, [DONE] after it)."""
        if self.exception is not None:
            return False
        if self.complete:
            return True
        if self.error is None or set(self.error) != {"message", "type", "param", "code"}:
            return False
        return self.status != 200 or self.done


def request(
    url: str, body: dict[str, Any], timeout_s: float = 60.0, outcome: Outcome | None = None
) -> Outcome:
    """Send one completion request and read it to its end (into `outcome`, if given: a stream's
    first event sets its `first_event` while the rest is still being read)."""
    outcome = outcome or Outcome()
    start = time.monotonic()
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout_s) as r:
            outcome.status = r.status_code
            outcome.retry_after = r.headers.get("retry-after")
            if r.status_code == 200 and body.get("stream"):
                _read_stream(r, outcome)
            else:
                _read_body(r.read(), outcome)
    except httpx.HTTPError as exc:
        outcome.exception = repr(exc)
    outcome.elapsed_s = time.monotonic() - start
    outcome.first_event.set()
    return outcome


def _read_body(raw: bytes, outcome: Outcome) -> None:
    payload = json.loads(raw)
    if "error" in payload:
        outcome.error = payload["error"]
        return
    (choice,) = payload["choices"]
    outcome.text = choice["text"]
    outcome.finish_reason = choice["finish_reason"]
    outcome.num_completion_tokens = payload["usage"]["completion_tokens"]


def _read_stream(response: httpx.Response, outcome: Outcome) -> None:
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            outcome.done = True
            return
        event = json.loads(data)
        if "error" in event:
            outcome.error = event["error"]
            continue
        if event.get("usage"):
            outcome.num_completion_tokens = event["usage"]["completion_tokens"]
        for choice in event.get("choices", []):
            outcome.text += choice.get("text") or ""
            outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
        outcome.first_event.set()


class Sent:
    """A request running on a thread of its own; `result()` waits for its outcome."""

    def __init__(self, url: str, body: dict[str, Any], timeout_s: float = 60.0) -> None:
        self.outcome = Outcome()
        self._thread = threading.Thread(
            target=request, args=(url, body, timeout_s, self.outcome), daemon=True
        )
        self._thread.start()

    def wait_first_event(self, timeout_s: float = 30.0) -> None:
        assert self.outcome.first_event.wait(timeout_s), "no first event"

    def result(self, timeout_s: float = 90.0) -> Outcome:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the request never ended"
        return self.outcome
