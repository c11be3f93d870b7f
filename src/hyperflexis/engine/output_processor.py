"""Turns a request's tokens into text as they arrive: incremental detokenisation, stop strings
(honouring `min_tokens` and `include_stop_str_in_output`) and the logprobs collected per token.

Stop strings need the tokenizer, so they are checked here rather than in the scheduler; the engine
loop finishes a request whose text hit one. While a request runs, its text holds back the last
`longest stop string - 1` characters, so a stop string split over two steps never reaches a
streaming client before it is cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hyperflexis.core.outputs import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
    SampledTokens,
)
from hyperflexis.core.request import FinishReason, Request


class Detokenizer(Protocol):
    """Turns one request's output tokens into text, one token at a time."""

    def add_token(self, token_id: int) -> str:
        """Append a token; returns the text it completes (may be empty mid-character)."""
        ...

    def flush(self) -> str:
        """At the end of the stream, the text still held back."""
        ...


class DetokenizerFactory(Protocol):
    """Prompt token ids -> a detokenizer for the output that follows them."""

    def __call__(
        self, prompt_ids: list[int], /, skip_special_tokens: bool = True
    ) -> Detokenizer: ...


@dataclass(slots=True)
class _TextState:
    """One unfinished request's text so far."""

    request: Request  # the scheduler's request object (tokens, timing, status)
    prompt: str | None  # the prompt text, when the caller gave text
    detokenizer: Detokenizer  # fed each output token once
    text: str = ""  # the output text, cut before a stop string once one appears
    num_detokenized: int = 0  # output tokens already fed to the detokenizer
    stop_string: str | None = None  # the stop string that ended it, if any
    logprobs: list[dict[int, Logprob]] | None = None  # per output token, when asked for
    prompt_logprobs: dict[int, dict[int, Logprob]] | None = None  # by prompt position, if asked


class OutputProcessor:
    """Per-request text, stop strings and `RequestOutput`s for the engine loop."""

    def __init__(self, make_detokenizer: DetokenizerFactory) -> None:
        self._make_detokenizer = make_detokenizer
        self._states: dict[str, _TextState] = {}

    def add(self, request: Request, prompt: str | None) -> None:
        prompt_ids = list(request.prompt_token_ids)
        if request.sampling_params.skip_special_tokens:
            detokenizer = self._make_detokenizer(prompt_ids)
        else:  # only then the keyword, so factories that always skip them still fit
            detokenizer = self._make_detokenizer(prompt_ids, skip_special_tokens=False)
        # A resumed request's earlier tokens' logprobs stayed where they were computed (its
        # client has them): empty entries keep the list aligned with the tokens.
        logprobs: list[dict[int, Logprob]] | None = (
            None if request.sampling_params.logprobs is None else [{}] * request.num_output_tokens
        )
        wants_prompt = request.sampling_params.prompt_logprobs is not None
        self._states[request.request_id] = _TextState(
            request,
            prompt,
            detokenizer,
            logprobs=logprobs,
            prompt_logprobs={} if wants_prompt else None,
        )

    def add_logprobs(self, sampled: SampledTokens) -> None:
        """Record one step's logprobs: each sampled token's entry, and prompt tokens' entries
        by position."""
        for request_id, entry in sampled.logprobs.items():
            state = self._states.get(request_id)
            if state is not None and state.logprobs is not None:
                state.logprobs.append(entry)
        for request_id, by_position in sampled.prompt_logprobs.items():
            state = self._states.get(request_id)
            if state is not None and state.prompt_logprobs is not None:
                state.prompt_logprobs.update(by_position)

    def get(self, request_id: str) -> Request | None:
        state = self._states.get(request_id)
        return None if state is None else state.request

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def detokenize(self, request_id: str) -> bool:
        """Feed the request's new output tokens to its text; True if a stop string appeared.

        The text is cut before the earliest stop string; tokens after it are not detokenised.
        A finished request's held-back text is flushed.
        """
        state = self._states[request_id]
        if state.stop_string is not None:
            return False
        request = state.request
        output_ids = request.output_token_ids
        params = request.sampling_params
        hidden: set[int | None] = set()
        if not params.include_stop_str_in_output:
            hidden.update(params.stop_token_ids)
            if not params.ignore_eos:
                hidden.add(request.eos_token_id)
        while state.num_detokenized < len(output_ids):
            token_id = output_ids[state.num_detokenized]
            state.num_detokenized += 1
            if token_id in hidden:
                continue  # a stop token or EOS is not part of the text unless asked for
            if _append(state, state.detokenizer.add_token(token_id)):
                return True
        return _text_ended(request) and _append(state, state.detokenizer.flush())

    def output(self, request_id: str) -> RequestOutput:
        """The request's output now; a finished request's state is dropped afterwards."""
        state = self._states[request_id]
        request = state.request
        finished = request.is_finished
        if finished:
            del self._states[request_id]
        output_ids = list(request.output_token_ids)
        logprobs = None if state.logprobs is None else state.logprobs[: len(output_ids)]
        return RequestOutput(
            request_id=request_id,
            prompt=state.prompt,
            prompt_token_ids=list(request.prompt_token_ids),
            outputs=[
                CompletionOutput(
                    index=0,
                    text=state.text if _text_ended(request) else _visible(state),
                    token_ids=output_ids,
                    cumulative_logprob=_cumulative(logprobs, output_ids),
                    logprobs=logprobs,
                    finish_reason=None
                    if request.finish_reason is None
                    else request.finish_reason.value,
                    stop_reason=_stop_reason(state) if finished else None,
                )
            ],
            finished=finished,
            metrics=RequestMetrics(
                arrival_s=request.arrival_s,
                first_scheduled_s=request.first_scheduled_s,
                first_token_s=request.first_token_s,
                last_token_s=request.last_token_s,
                finish_s=request.finish_s,
                num_preemptions=request.num_preemptions,
                num_output_tokens=request.num_output_tokens,
            ),
            attained=request.attained if finished else None,
            prompt_logprobs=_prompt_logprobs(state),
        )


def _append(state: _TextState, delta: str) -> bool:
    """Add text; True (and the text cut) if it completes a stop string. Stop strings count only
    once the output has more than `min_tokens` tokens (as in vLLM)."""
    params = state.request.sampling_params
    stops = params.stop
    before = len(state.text)
    state.text += delta
    if not stops or not delta or state.num_detokenized <= params.min_tokens:
        return False
    # A stop string can only end inside the new text, so search from just before it.
    window_start = max(0, before - max(len(s) for s in stops) + 1)
    found = [(i, s) for s in stops if (i := state.text.find(s, window_start)) >= 0]
    if not found:
        return False
    cut, state.stop_string = min(found)
    if params.include_stop_str_in_output:
        cut += len(state.stop_string)
    state.text = state.text[:cut]
    return True


def _text_ended(request: Request) -> bool:
    """Whether the request's text is complete: finished here, and not handed to a decode
    instance where it goes on (a prefill's held-back text is not flushed)."""
    return request.is_finished and request.finish_reason is not FinishReason.PREFILLED


def _prompt_logprobs(state: _TextState) -> PromptLogprobs | None:
    if state.prompt_logprobs is None:
        return None
    by_position = state.prompt_logprobs
    num_prompt = state.request.num_prompt_tokens
    return [None, *(by_position.get(p) for p in range(1, num_prompt))]


def _cumulative(logprobs: list[dict[int, Logprob]] | None, token_ids: list[int]) -> float | None:
    if logprobs is None or any(t not in e for e, t in zip(logprobs, token_ids, strict=False)):
        return None  # none asked, or a resumed request's earlier ones are not here
    return sum(entry[t].logprob for entry, t in zip(logprobs, token_ids, strict=False))


def _visible(state: _TextState) -> str:
    """Text safe to show while running: a stop string's possible start is held back."""
    hold = max((len(s) for s in state.request.sampling_params.stop), default=1) - 1
    return state.text[: len(state.text) - hold] if hold else state.text


def _stop_reason(state: _TextState) -> str | int | None:
    if state.stop_string is not None:
        return state.stop_string
    request = state.request
    if request.finish_reason is FinishReason.STOP and request.output_token_ids:
        last = request.output_token_ids[-1]
        if last in request.sampling_params.stop_token_ids:
            return last
    return None
