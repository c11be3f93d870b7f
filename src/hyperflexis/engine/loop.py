"""`LLMEngine`: one instance's step loop. Schedule, execute, update, then turn tokens into outputs.

The loop makes no scheduling decision: the scheduler policy chooses each batch, the model runner
computes it, and the loop only carries tokens between them. It is the one place here that reads
the clock (a function passed in, so tests can drive it) and hands `now` to the scheduler.
"""

from __future__ import annotations

import dataclasses
import operator
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from hyperflexis.core.outputs import RequestOutput, SampledTokens
from hyperflexis.core.request import DEFAULT_SLO, FinishReason, Request
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.engine.output_processor import DetokenizerFactory, OutputProcessor
from hyperflexis.engine.resume import Resume, resumed_request
from hyperflexis.scheduler.base import Scheduler
from hyperflexis.scheduler.leases import Lease
from hyperflexis.scheduler.output import SchedulerOutput


class ModelFacts(Protocol):
    """What the loop needs to know about the model to validate requests."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...


class StepRunner(Protocol):
    """Runs one step's batch: the real `ModelRunner`, or a stand-in in tests."""

    @property
    def config(self) -> ModelFacts: ...

    @property
    def max_model_len(self) -> int: ...

    def execute(self, scheduler_output: SchedulerOutput) -> Mapping[str, int]:
        """Compute the batch; returns the sampled token of every chunk that samples."""
        ...


# Called once per step that ran a batch, with the batch and the seconds it really took: from its
# start to the next step's start when the loop went straight on (so the policy's own time, the
# caller's work between steps and the OS's preemptions count, as they do against deadlines),
# else its own wall time. Where an online latency correction learns how far predictions are off.
StepObserver = Callable[[SchedulerOutput, float], None]


@dataclass(slots=True)
class StepTimes:
    """Where one step's time went, in seconds of the engine clock."""

    schedule_s: float = 0.0  # the policy choosing the batch
    execute_s: float = 0.0  # the model runner's forward pass and sampling
    update_s: float = 0.0  # the scheduler's bookkeeping after the step
    process_s: float = 0.0  # detokenising, stop strings, building outputs
    num_tokens: int = 0  # tokens the batch computed

    @property
    def overhead_s(self) -> float:
        """Everything outside the model runner."""
        return self.schedule_s + self.update_s + self.process_s


class LLMEngine:
    """Requests in, `RequestOutput`s out, one step at a time."""

    def __init__(
        self,
        runner: StepRunner,
        scheduler: Scheduler,
        make_detokenizer: DetokenizerFactory,
        *,
        clock: Callable[[], float] = time.monotonic,
        step_observer: StepObserver | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        """`eos_token_ids` defaults to the model config's; the first is the one the scheduler
        checks, the loop stops requests on the others."""
        self.runner = runner
        self.scheduler = scheduler
        self.clock = clock
        self.step_observer = step_observer
        self.last_step = StepTimes()  # timing of the latest step, for benchmarks
        # The latest batch, its start and its own wall time, until the next step starts.
        self._unobserved: tuple[SchedulerOutput, float, float] | None = None
        self._outputs = OutputProcessor(make_detokenizer)
        eos = tuple(runner.config.eos_token_ids if eos_token_ids is None else eos_token_ids)
        self._eos_token_id = eos[0] if eos else None  # the scheduler stops on this one
        self._extra_eos_ids = frozenset(eos[1:])  # the loop stops on the others
        # Generation stops at whichever ends first: the model's context or the KV cache.
        kv = scheduler.kv
        self.max_context_len = min(runner.max_model_len, kv.num_blocks * kv.block_size)

    # -- requests in and out ----------------------------------------------------------------

    def add_request(
        self,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams | None = None,
        slo: SLO | None = None,
        request_id: str | None = None,
        arrival_s: float | None = None,
        prompt: str | None = None,
    ) -> str:
        """Validate and queue a request; returns its id. Generation is cut at the end of the
        context with finish reason "length"."""
        token_ids, params = self._checked(prompt_token_ids, sampling_params)
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif request_id in self._outputs:
            raise ValueError(f"duplicate request id {request_id!r}")
        request = Request(
            request_id=request_id,
            prompt_token_ids=token_ids,
            sampling_params=params,
            slo=DEFAULT_SLO if slo is None else slo,
            arrival_s=self.clock() if arrival_s is None else arrival_s,
            eos_token_id=self._eos_token_id,
        )
        self.scheduler.add_request(request)
        self._outputs.add(request, prompt)
        return request_id

    def resume(self, resume: Resume, prompt: str | None = None) -> list[int]:
        """Continue a request begun elsewhere (DESIGN.md §10): its prompt plus the output its
        client already has. `kv_tokens` 0: recompute both here; > 0: its first `kv_tokens`
        tokens' KV is being copied into the returned local blocks, and it waits (not
        scheduled) until `kv_arrived` or, on `kv_failed`, recomputes. Its deadlines, output
        count, text, stop strings and max_tokens continue as if it had never moved."""
        token_ids, params = self._checked(resume.prompt_token_ids, resume.sampling_params)
        if resume.request_id in self._outputs:
            raise ValueError(f"duplicate request id {resume.request_id!r}")
        self._check_token_ids(resume.output_token_ids, "output_token_ids")
        request = resumed_request(resume, token_ids, params, self.clock(), self._eos_token_id)
        blocks: list[int] = []
        if resume.kv_tokens > 0:
            blocks = self.scheduler.add_receiving(request, resume.kv_tokens)
        else:
            self.scheduler.add_request(request)
        self._outputs.add(request, prompt)
        self._outputs.detokenize(request.request_id)  # the text the client has, and any hold
        return blocks

    def kv_arrived(self, request_id: str) -> bool:
        """A resumed request's KV is in its blocks: it decodes from here. False when it is not
        waiting for KV (aborted meanwhile)."""
        return self.scheduler.kv_arrived(request_id)

    def kv_failed(self, request_id: str) -> bool:
        """A resumed request's KV will not come: it recomputes its prompt and output here."""
        return self.scheduler.kv_failed(request_id)

    def release_lease(self, request_id: str) -> bool:
        """Prefill role: free the blocks a finished prompt holds for its decode peer."""
        return self.scheduler.release_lease(request_id)

    def expire_leases(self) -> list[str]:
        """Free the leases that are due now; returns their request ids."""
        return self.scheduler.expire_leases(self.clock())

    def _checked(
        self, prompt_token_ids: Sequence[int], sampling_params: SamplingParams | None
    ) -> tuple[list[int], SamplingParams]:
        """A request's prompt and sampling parameters, checked; max_tokens cut to the room the
        context leaves."""
        params = SamplingParams() if sampling_params is None else sampling_params
        if not isinstance(params, SamplingParams):
            raise ValueError(
                f"invalid 'sampling_params': expected SamplingParams, got {type(params).__name__}"
            )
        if params.n != 1:
            raise ValueError(
                "invalid sampling parameter 'n': the engine runs one sample per "
                "request; LLM and the server fan n out (SamplingParams.for_sample)"
            )
        token_ids = self._check_prompt(prompt_token_ids)
        self._check_token_ids(params.named_token_ids, "sampling_params")
        if len(token_ids) >= self.max_context_len:
            raise ValueError(
                f"invalid prompt: {len(token_ids)} tokens leave no room to generate in the KV "
                f"cache of {self.max_context_len} tokens"
            )
        room = self.max_context_len - len(token_ids)
        if params.max_tokens > room:
            params = dataclasses.replace(params, max_tokens=room)
        return token_ids, params

    def receive(self, request: Request, prompt: str | None = None) -> None:
        """P/D, the decode side of a hand-off: take over a request whose prompt's KV was
        computed on a prefill instance (`num_computed_tokens` of it) and whose first token is
        out. It decodes here with its deadlines unchanged; its outputs carry every output token,
        the first included."""
        if request.request_id in self._outputs:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if request.first_token_s is None or request.num_computed_tokens < 1:
            raise ValueError(f"invalid hand-off {request.request_id!r}: its prefill is not done")
        self.scheduler.add_request(request)
        self._outputs.add(request, prompt)

    def abort(self, request_id: str) -> RequestOutput | None:
        """End a request now and free its KV (a lease under its id too); returns its final
        output, None if unknown."""
        self.scheduler.release_lease(request_id)
        if request_id not in self._outputs:
            return None
        self.scheduler.abort_request(request_id, self.clock())
        output = self._outputs.output(request_id)
        if not self.has_unfinished():
            self._observe(None)  # no next step follows straight on
        return output

    def migrate_out(self, request_id: str) -> tuple[Lease | None, RequestOutput] | None:
        """A drain's migration: stop decoding the request here, its KV pinned under a lease for
        the instance that continues it (none when it holds no KV); its output so far. None
        when it is not decoding here (unknown, finished, no output yet, receiving KV)."""
        if request_id not in self._outputs:
            return None
        try:
            lease = self.scheduler.migrate_out(request_id, self.clock())
        except ValueError:
            return None
        output = self._outputs.output(request_id)  # finished: its state is dropped
        if not self.has_unfinished():
            self._observe(None)
        return lease, output

    def has_unfinished(self) -> bool:
        return len(self._outputs) > 0

    @property
    def num_unfinished(self) -> int:
        return len(self._outputs)

    # -- the step ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one step; returns an output for every request that got a token or finished."""
        start = self.clock()
        self._observe(start)
        batch = self.scheduler.schedule(start)
        self._stamp_first_scheduled(batch, start)
        scheduled = self.clock()
        sampled = self.runner.execute(batch) if not batch.is_empty else {}
        executed = self.clock()
        finished = self.scheduler.update(batch, sampled, executed)
        if isinstance(sampled, SampledTokens):
            self._outputs.add_logprobs(sampled)
        updated = self.clock()
        outputs = self._process(batch, finished, updated)
        self._record(batch, (start, scheduled, executed, updated, self.clock()))
        return outputs

    def _stamp_first_scheduled(self, batch: SchedulerOutput, now: float) -> None:
        """A request's queue time ends when a step first computes any of its tokens; only a
        chunk at position 0 can be a first (a preempted request restarts there, but keeps its
        first stamp)."""
        for chunk in batch.chunks:
            if chunk.start_pos == 0:
                request = self._outputs.get(chunk.request_id)
                if request is not None and request.first_scheduled_s is None:
                    request.first_scheduled_s = now

    def _record(
        self, batch: SchedulerOutput, marks: tuple[float, float, float, float, float]
    ) -> None:
        start, scheduled, executed, updated, done = marks
        self.last_step = StepTimes(
            schedule_s=scheduled - start,
            execute_s=executed - scheduled,
            update_s=updated - executed,
            process_s=done - updated,
            num_tokens=batch.num_tokens,
        )
        if self.step_observer is not None and not batch.is_empty:
            self._unobserved = (batch, start, done - start)
            if not self.has_unfinished():
                self._observe(None)

    def _observe(self, next_start: float | None) -> None:
        """Report the latest batch: its cycle up to `next_start`, or (None) its own time."""
        if self._unobserved is None or self.step_observer is None:
            return
        batch, start, wall_s = self._unobserved
        self._unobserved = None
        self.step_observer(batch, wall_s if next_start is None else next_start - start)

    def _process(
        self, batch: SchedulerOutput, finished: list[Request], now: float
    ) -> list[RequestOutput]:
        touched = [c.request_id for c in batch.chunks if c.sample]
        touched += [r.request_id for r in finished if r.request_id not in touched]
        outputs = []
        for request_id in touched:
            request = self._outputs.get(request_id)
            if request is None:
                continue  # aborted while the step ran
            stop_hit = self._outputs.detokenize(request_id)
            if not request.is_finished and (stop_hit or self._hit_extra_eos(request)):
                self.scheduler.finish_request(request_id, FinishReason.STOP, now)
            elif stop_hit:
                # Its last token both hit max_tokens and completed a stop string: vLLM says stop.
                request.finish_reason = FinishReason.STOP
            outputs.append(self._outputs.output(request_id))
        return outputs

    def _hit_extra_eos(self, request: Request) -> bool:
        return (
            not request.sampling_params.ignore_eos
            and request.num_output_tokens > 0
            and request.token_ids[-1] in self._extra_eos_ids
        )

    # -- validation -------------------------------------------------------------------------

    def _check_prompt(self, prompt_token_ids: Sequence[int]) -> list[int]:
        token_ids = [_as_token_id(t) for t in prompt_token_ids]
        if not token_ids:
            raise ValueError("invalid prompt: it has no tokens")
        max_len = self.runner.max_model_len
        if len(token_ids) >= max_len:
            raise ValueError(
                f"invalid prompt: {len(token_ids)} tokens leave no room to generate in the "
                f"model's context of {max_len} tokens"
            )
        self._check_token_ids(token_ids, "prompt")
        return token_ids

    def _check_token_ids(self, token_ids: Collection[int], where: str) -> None:
        vocab_size = self.runner.config.vocab_size
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"invalid {where}: token id {token_id} is outside the vocabulary "
                    f"of {vocab_size} tokens"
                )


def _as_token_id(value: object) -> int:
    """An int token id; numpy and torch integers pass, floats and bools do not."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"invalid prompt: token id {value!r} is not an int")
    return operator.index(value)
