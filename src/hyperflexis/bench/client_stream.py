"""One streamed response as the load client sees it: the SSE lines in, a `RequestResult` out.

The client's clock stamps each chunk that carries output; usage, finish reasons, error events and
HTTP errors decide the record's status. A 503 (admission control) or a finish reason or error
event that says "rejected" is a rejection; anything else that goes wrong is a failure.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from hyperflexis.bench.metrics import RecordStatus, RequestRecord
from hyperflexis.core.slo import SLOClasses, token_lateness_s
from hyperflexis.workloads.spec import RequestSpec

REJECTED_STATUS = 503  # admission control said no (with Retry-After)
# Finish reasons that mean the request did not complete (vLLM's "abort", ours "rejected").
_FAILED_REASONS = ("rejected", "abort", "error")


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One offered request: what was asked and what the client saw."""

    spec: RequestSpec  # the workload's request
    record: RequestRecord  # timings on the run's clock (arrival_s is when it was sent)
    prompt_tokens: int  # the server's usage.prompt_tokens, else the prompt builder's count
    generated_text: str
    error: str  # "" when it completed; else why it was rejected or failed
    http_status: int | None  # None when no response came (connection error, timeout)
    retry_after_s: float | None  # a rejection's Retry-After header, when given
    server_overhead_ms: float | None = None  # the server's `OVERHEAD_HEADER`, when it sends one


class ResponseStream:
    """What one response has delivered so far (mutable while the stream runs)."""

    def __init__(self, chat: bool, clock: Callable[[], float]) -> None:
        self._chat = chat  # chat completions put the text in `delta.content`
        self._clock = clock
        self.sent_s = 0.0
        self.chunk_times_s: list[float] = []  # arrival of each chunk that carried output
        self.texts: list[str] = []
        self.usage_prompt_tokens: int | None = None
        self.usage_completion_tokens: int | None = None
        self.finish_reason: str | None = None  # the last one a choice gave
        self.finish_chunk_s: float | None = None  # arrival of the chunk that gave it
        self.finish_s: float | None = None
        self.status: RecordStatus | None = None  # set when it ended badly
        self.error = ""
        self.http_status: int | None = None
        self.retry_after_s: float | None = None
        self.server_overhead_ms: float | None = None
        self.instance: str | None = None  # a HyperFlexis server's `INSTANCE_HEADER`, when sent

    def feed(self, line: str) -> bool:
        """Take one SSE line; False at `data: [DONE]` or an error event (the stream is over)."""
        if not line.startswith("data:"):
            return True  # blank separators, comments, `event:` lines
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return False
        now = self._clock()
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            self.fail(f"malformed SSE data: {payload[:200]!r}")
            return False
        if not isinstance(data, dict):
            self.fail(f"malformed SSE data: {payload[:200]!r}")
            return False
        if "error" in data:
            self._stream_error(data["error"])
            return False
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage_prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
            self.usage_completion_tokens = _int_or_none(usage.get("completion_tokens"))
        choices = data.get("choices")
        text = self._text(choices)
        reason = choices[0].get("finish_reason") if text is not None and choices else None
        if isinstance(reason, str):
            self.finish_reason = reason
            self.finish_chunk_s = now
        if text:
            self.chunk_times_s.append(now)
            self.texts.append(text)
        return True

    def finish(self) -> None:
        if self.status is None:
            self.finish_s = self._clock()

    def fail(self, error: str, status: RecordStatus = "failed") -> None:
        self.status = status
        self.error = error
        self.finish_s = self._clock()

    def http_error(self, response: httpx.Response) -> None:
        message = _error_message(response.text) or response.reason_phrase
        if response.status_code == REJECTED_STATUS:
            self.retry_after_s = float_or_none(response.headers.get("retry-after"))
            self.fail(f"HTTP 503: {message}", "rejected")
        else:
            self.fail(f"HTTP {response.status_code}: {message}")

    def result(self, spec: RequestSpec, classes: SLOClasses, prompt_tokens: int) -> RequestResult:
        num_output = self.usage_completion_tokens
        if num_output is None:
            num_output = len(self.chunk_times_s)
        if self.status is None and self.finish_reason in _FAILED_REASONS:
            # Some servers end a request they turned away late with a finish reason.
            status_of_reason: RecordStatus = (
                "rejected" if self.finish_reason == "rejected" else "failed"
            )
            self.fail(f"finish_reason {self.finish_reason!r}", status_of_reason)
        # Tokens whose text is empty (a special token, skipped): the usage counts them and the
        # finish chunk is when they had all come, so it stands for the first one.
        if (
            self.status is None
            and not self.chunk_times_s
            and num_output >= 1
            and self.finish_reason in ("stop", "length")
            and self.finish_chunk_s is not None
        ):
            self.chunk_times_s.append(self.finish_chunk_s)
        if self.status is None and (not self.chunk_times_s or num_output < 1):
            self.fail(
                "the stream ended without output (finish_reason "
                f"{self.finish_reason!r}, usage completion_tokens {self.usage_completion_tokens})"
            )
        status: RecordStatus = self.status or "completed"
        first = self.chunk_times_s[0] if self.chunk_times_s else None
        finish = self.finish_s if self.finish_s is not None else self._clock()
        slo = classes[spec.slo_class]
        gaps = [b - a for a, b in itertools.pairwise(self.chunk_times_s)]
        # Chunk i's first token has index >= i, so judging chunk i as token i is never lenient.
        lateness = [
            token_lateness_s(t, i, self.sent_s, slo.ttft_s, slo.tpot_s)
            for i, t in enumerate(self.chunk_times_s)
        ]
        record = RequestRecord(
            request_id=spec.request_id,
            slo_class=slo.name,
            priority=slo.priority,
            ttft_slo_s=slo.ttft_s,
            tpot_slo_s=slo.tpot_s,
            arrival_s=self.sent_s,
            first_token_s=first,
            finish_s=max(finish, first) if first is not None else finish,
            num_prompt_tokens=self.usage_prompt_tokens or prompt_tokens,
            num_output_tokens=num_output if status == "completed" else len(self.chunk_times_s),
            status=status,
            inter_token_latencies_s=gaps,
            instance=self.instance,
            max_itl_s=max(gaps, default=None),
            max_token_lateness_s=max(lateness, default=None),
            finish_reason=self.finish_reason if status == "completed" else _reason(status),
        )
        return RequestResult(
            spec=spec,
            record=record,
            prompt_tokens=record.num_prompt_tokens,
            generated_text="".join(self.texts),
            error=self.error,
            http_status=self.http_status,
            retry_after_s=self.retry_after_s,
            server_overhead_ms=self.server_overhead_ms,
        )

    def _text(self, choices: Any) -> str | None:
        """The first choice's new text ("" when it has none); None without a choice."""
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if self._chat:
            delta = choice.get("delta")
            value = delta.get("content") if isinstance(delta, dict) else None
        else:
            value = choice.get("text")
        return value if isinstance(value, str) else ""

    def _stream_error(self, error: Any) -> None:
        fields = error if isinstance(error, dict) else {"message": str(error)}
        code = fields.get("code")
        message = str(fields.get("message", error))
        rejected = code in (REJECTED_STATUS, str(REJECTED_STATUS), "overloaded") or (
            "reject" in str(fields.get("type", ""))
        )
        self.fail(f"stream error: {message}", "rejected" if rejected else "failed")


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:200]
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data))
        if isinstance(error, dict):
            return str(error.get("message", error))[:200]
        return str(error)[:200]
    return str(data)[:200]


def _reason(status: RecordStatus) -> str:
    """Why a request that did not complete ended, in the engine's finish-reason words."""
    return {"rejected": "rejected", "aborted": "abort"}.get(status, "error")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
