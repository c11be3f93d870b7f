"""The one resume path (DESIGN.md §10): a request that continues on this instance after it began
elsewhere, with its prompt, the output its client already has, and its times as durations.

A P/D hand-off resumes with its prompt's KV coming from the prefill instance (`kv_tokens` > 0); a
failed pull, a migration without KV and instance-failure recovery resume with none and recompute
prompt and output here. Either way the request keeps its deadlines: its arrival and first token
are placed on this instance's clock from their ages.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperflexis.core.request import DEFAULT_SLO, Request
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO


@dataclass(frozen=True, slots=True)
class Resume:
    """What a request needs to continue here."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # already emitted, in order
    sampling_params: SamplingParams | None = None
    slo: SLO | None = None  # unchanged from the original arrival
    age_s: float = 0.0  # seconds since it arrived, as of now
    ttft_s: float | None = None  # its first token's latency; required with output tokens
    queue_s: float | None = None  # arrival to first scheduled, where it was first scheduled
    kv_tokens: int = 0  # 0: recompute; > 0: this many tokens' KV comes from a peer


def resumed_request(
    resume: Resume,
    prompt_token_ids: list[int],
    params: SamplingParams,
    now: float,
    eos_token_id: int | None,
) -> Request:
    """The scheduler's request for `resume` (prompt and params already checked by the engine),
    with its output so far and its times placed at `now` minus their ages."""
    output = list(resume.output_token_ids)
    if resume.age_s < 0:
        raise ValueError(f"invalid resume: age_s {resume.age_s} is negative")
    if output and resume.ttft_s is None:
        raise ValueError("invalid resume: output tokens without the first token's ttft_s")
    if resume.ttft_s is not None and not 0 <= resume.ttft_s <= resume.age_s:
        raise ValueError(f"invalid resume: ttft_s {resume.ttft_s} outside 0..age_s")
    if len(output) >= params.max_tokens:
        raise ValueError(
            f"invalid resume: {len(output)} output tokens leave nothing to generate "
            f"(max_tokens {params.max_tokens})"
        )
    arrival_s = now - resume.age_s
    request = Request(
        request_id=resume.request_id,
        prompt_token_ids=prompt_token_ids,
        sampling_params=params,
        slo=DEFAULT_SLO if resume.slo is None else resume.slo,
        arrival_s=arrival_s,
        eos_token_id=eos_token_id,
    )
    if resume.queue_s is not None:
        request.first_scheduled_s = arrival_s + resume.queue_s
    if resume.ttft_s is not None:
        request.first_token_s = arrival_s + resume.ttft_s
        # The earlier tokens' own times are not known here; the deadlines count from the first.
        for token_id in output:
            request.append_token(token_id, now)
    return request
