"""The load client's reading of OpenAI responses, against canned streams (no server): what each
kind of answer becomes, and what each request sends."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from hyperflexis.bench.client import ClientConfig, Endpoint, RequestResult, run_benchmark
from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads import RequestSpec, make_workload

CLASSES = SLOClasses()
Handler = Callable[[httpx.Request], httpx.Response]


def _sse(*events: object) -> bytes:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    return "".join(lines).encode()


def _text(text: str, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def _run(
    handler: Handler, endpoint: Endpoint = "completions", output_len: int = 3
) -> RequestResult:
    workload = make_workload([RequestSpec("r0", 0.0, 10, output_len, "interactive")])
    config = ClientConfig("http://test", "m", endpoint=endpoint, show_progress=False)
    run = run_benchmark(workload, CLASSES, config, transport=httpx.MockTransport(handler))
    return run.results[0]


def test_a_stream_becomes_a_completed_record_and_the_request_carries_its_slo() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404)  # the warm-up probe
        seen.append(request)
        usage = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}}
        body = _sse(_text("a"), _text(""), _text(" b"), _text(" c", "length"), usage, "[DONE]")
        return httpx.Response(200, content=body)

    result = _run(handler)
    record = result.record
    assert record.status == "completed" and record.num_output_tokens == 3
    assert result.prompt_tokens == 11
    assert result.generated_text == "a b c"
    assert len(record.inter_token_latencies_s or ()) == 2  # chunks with text only
    (request,) = seen
    body = json.loads(request.content)
    assert request.url.path == "/v1/completions"
    assert body["max_tokens"] == 3 and body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["slo_class"], body["priority"], body["ttft_ms"], body["tpot_ms"]) == (
        "interactive",
        0,
        500.0,
        40.0,
    )
    assert request.headers["x-slo-class"] == "interactive"
    assert request.headers["x-priority"] == "0"
    assert request.headers["x-slo-ttft-ms"] == "500"
    assert request.headers["x-slo-tpot-ms"] == "40"


def test_chat_reads_deltas_and_skips_the_role_chunk() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        chunks = [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in ("x", "y")]
        return httpx.Response(200, content=_sse(role, *chunks, "[DONE]"))

    result = _run(handler, endpoint="chat", output_len=2)
    record = result.record
    assert record.status == "completed"
    assert record.num_output_tokens == 2  # no usage chunk: counted from the chunks
    assert result.generated_text == "xy"


@pytest.mark.parametrize(
    ("response", "status", "error"),
    [
        (
            httpx.Response(503, json={"error": {"message": "busy"}}, headers={"Retry-After": "2"}),
            "rejected",
            "busy",
        ),
        (httpx.Response(400, json={"error": {"message": "bad max_tokens"}}), "failed", "400"),
        (
            httpx.Response(200, content=_sse(_text("a"), {"error": {"message": "boom"}})),
            "failed",
            "boom",
        ),
        (
            httpx.Response(200, content=_sse({"error": {"message": "late", "code": "overloaded"}})),
            "rejected",
            "late",
        ),
        (
            httpx.Response(200, content=_sse(_text("", "rejected"), "[DONE]")),
            "rejected",
            "rejected",
        ),
        (httpx.Response(200, content=_sse("{not json")), "failed", "malformed"),
        (httpx.Response(200, content=_sse("[DONE]")), "failed", "without output"),
    ],
)
def test_what_goes_wrong_is_recorded(response: httpx.Response, status: str, error: str) -> None:
    result = _run(lambda request: response)
    record = result.record
    assert record.status == status
    assert error in result.error
    assert not record.attained
    if status == "rejected" and response.status_code == 503:
        assert result.retry_after_s == 2.0


def test_tokens_without_text_complete_at_their_finish_chunk() -> None:
    """One sampled special token (skipped in the text) is still one completed token: usage says
    so, and the finish chunk is when it came."""
    usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
    body = _sse(_text("", "length"), usage, "[DONE]")
    result = _run(lambda request: httpx.Response(200, content=body), output_len=1)
    record = result.record
    assert record.status == "completed" and result.error == ""
    assert record.num_output_tokens == 1 and result.generated_text == ""
    assert record.first_token_s is not None and record.first_token_s <= record.finish_s


def test_a_finish_without_tokens_is_still_a_failure() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 0}}
    body = _sse(_text("", "length"), usage, "[DONE]")
    result = _run(lambda request: httpx.Response(200, content=body), output_len=1)
    assert result.record.status == "failed" and "without output" in result.error


def test_a_connection_error_is_a_failure() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = _run(handler)
    assert result.record.status == "failed"
    assert result.http_status is None and "ConnectError" in result.error
