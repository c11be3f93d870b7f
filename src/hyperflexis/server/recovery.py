"""What happens to a failed instance's requests (DESIGN.md §10.3): nothing is lost silently.

- A request that has streamed nothing is dispatched again, as it was, to a live instance.
- One that has streamed tokens continues on another instance through the one resume path
  (`ResumeRequest` with `kv=None`: the instance recomputes the prompt and the tokens already
  sent, and the stream goes on with nothing repeated), when the instances can resume.
- Otherwise it ends with an explicit error: a 503 with Retry-After before any output, an error
  event and [DONE] in a stream.

The dispatcher picks the instance as for a new request; when it finds none that meets the SLO,
the live instance with the most free KV takes the request anyway: late beats lost (its
scheduler may still reject it, which the client sees as a 503).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hyperflexis.backends.local import InstanceHandle
from hyperflexis.backends.messages import AddRequest, ResumeRequest
from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.server.core import RequestStream, ServingCore

# The instances run this same code: they resume once the engine has the resume path (live
# P/D's worker half; DESIGN.md §10.1).
RESUME_SUPPORTED = hasattr(LLMEngine, "resume")


@dataclass(frozen=True, slots=True)
class Recovered:
    """How a failed instance's requests were handled."""

    num_redispatched: int = 0  # had streamed nothing: sent again
    num_resumed: int = 0  # had streamed tokens: continue elsewhere
    num_failed: int = 0  # ended with an error


def recover(
    core: ServingCore, instance_id: str, reason: str, *, can_resume: bool = RESUME_SUPPORTED
) -> Recovered:
    """Move or end every open request of the failed `instance_id` (no longer live)."""
    counts = [0, 0, 0]
    for stream in [s for s in core.streams.values() if s.instance_id == instance_id]:
        started = stream.has_first_token
        if started and not (can_resume and stream.params is not None):
            message = f"instance {instance_id} failed ({reason}) while streaming this request"
            core.fail([stream], message, 500)
            counts[2] += 1
            continue
        handle = _choose(core, stream)
        if handle is None:
            message = f"instance {instance_id} failed ({reason}) and no other instance serves"
            core.fail([stream], message, 503)
            counts[2] += 1
            continue
        stream.instance_id = handle.instance_id
        handle.num_dispatched += 1
        handle.send(_resume(stream) if started else _add(stream))
        counts[1 if started else 0] += 1
    return Recovered(*counts)


def _add(stream: RequestStream) -> AddRequest:
    assert stream.params is not None
    return AddRequest(
        stream.request_id, stream.prompt_token_ids, stream.params, stream.slo, stream.arrival_s
    )


def _resume(stream: RequestStream) -> ResumeRequest:
    assert stream.params is not None
    return ResumeRequest(
        request_id=stream.request_id,
        prompt_token_ids=stream.prompt_token_ids,
        output_token_ids=list(stream.output_token_ids),
        sampling_params=stream.params,
        slo=stream.slo,
        age_s=time.monotonic() - stream.arrival_s,
        ttft_s=stream.ttft_s,
        num_text_chars_sent=stream.num_text_chars,
        kv=None,
    )


def _choose(core: ServingCore, stream: RequestStream) -> InstanceHandle | None:
    """The dispatcher's pick for the work left; else the live instance with most free KV."""
    live = core.pool.live()
    if not live:
        return None
    assert stream.params is not None
    max_tokens = max(1, stream.params.max_tokens - len(stream.output_token_ids))
    num_tokens = len(stream.prompt_token_ids) + len(stream.output_token_ids)
    request = DispatchRequest(
        stream.request_id, num_tokens, max_tokens, stream.slo, stream.arrival_s
    )
    decision = core.dispatcher.choose(request, core.pool.snapshots(), time.monotonic())
    if decision.instance_id is not None:
        handle = core.pool.handles.get(decision.instance_id)
        if handle is not None and handle.alive:
            return handle
    return max(live, key=lambda h: -1 if h.snapshot is None else h.snapshot.num_free_blocks)
