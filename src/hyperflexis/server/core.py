"""`ServingCore`: the server process's part of serving a request, between HTTP and instances.

Per request: tokenise (chat template included), check it fits, resolve its SLO, ask the
dispatcher for an instance using the latest load snapshots, and send it there. Instance reports
come back on the event loop and are routed to each request's `RequestStream`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from hyperflexis.backends.local import InstanceHandle, InstancePool
from hyperflexis.backends.messages import AddRequest, OutputDelta, StepReport
from hyperflexis.cluster.dispatcher import Dispatcher, DispatchRequest
from hyperflexis.cluster.links import LinkPolicy
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO, SLOClass
from hyperflexis.engine.tokenizer import Tokenizer
from hyperflexis.server import limits
from hyperflexis.server.access import Access
from hyperflexis.server.config import DEFAULT_MAX_REQUEST_BYTES
from hyperflexis.server.cost_model import SharedCorrection
from hyperflexis.server.errors import APIError, bad_request, overloaded, shutting_down
from hyperflexis.server.handoff import HandoffDriver
from hyperflexis.server.metrics import ServerMetrics
from hyperflexis.server.protocol import ChatInput, GenerationJob, Prompt

# Put in a stream's queue when its client disconnects: the consumer stops and aborts.
DISCONNECTED = OutputDelta("", [], "", "abort", error="client disconnected")


@dataclass(eq=False)
class RequestStream:
    """One live request: where it runs and the deltas still to deliver."""

    request_id: str
    instance_id: str
    slo: SLO
    num_prompt_tokens: int
    arrival_s: float  # server receipt, monotonic clock
    # Shared by the streams of one HTTP request (its prompts' samples), in choice order.
    queue: asyncio.Queue[OutputDelta] = field(default_factory=asyncio.Queue)
    has_first_token: bool = False
    finished: bool = False  # the instance is done with it (or it was aborted)
    prompt_index: int = 0  # which of the request's prompts it samples
    prompt_token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Plan:
    """A request validated and tokenised, not yet dispatched."""

    slo: SLO
    prompts: list[tuple[list[int], SamplingParams]]  # token ids and sampling, per prompt


class ServingCore:
    """Tokenise, dispatch, track; everything a route handler needs besides formatting."""

    def __init__(
        self,
        pool: InstancePool,
        dispatcher: Dispatcher,
        tokenizer: Tokenizer,
        access: Access,
        model_name: str,
        *,
        model_aliases: tuple[str, ...] = (),
        model_root: str | None = None,
        max_queued: int | None = None,
        max_queued_per_instance: int | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        request_timeout_s: float | None = None,
        shared_correction: SharedCorrection | None = None,
        link_policy: LinkPolicy = "all",
        price_per_hour: float = 0.0,
    ) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self.tokenizer = tokenizer
        self.access = access
        self.model_name = model_name  # the id /v1/models lists
        self.model_aliases = frozenset((model_name, *model_aliases))  # names requests may use
        self.model_root = model_root or model_name  # the checkpoint /v1/models names as root
        self.max_queued = max_queued  # requests without a first token; None: derived
        self.max_queued_per_instance = max_queued_per_instance  # the derived bound, per live one
        self.max_request_bytes = max_request_bytes  # 413 for a body over it
        self.request_timeout_s = request_timeout_s  # 503 past it; None: no bound
        self.draining = False  # SIGTERM: admit nothing new (503), let the open requests finish
        self.shared_correction = shared_correction
        self.metrics = ServerMetrics(
            model_name, access.slo_classes, pool.max_context_len, price_per_hour
        )
        self.streams: dict[str, RequestStream] = {}
        self.num_queued = 0  # streams with no first token yet
        self.vocab_size = pool.vocab_size  # the model's, which may exceed the tokenizer's
        for handle in pool.live():
            self.metrics.observe_instance(handle)
        # Routing and the P/D hand-off: the cluster controller, driven on the wall clock.
        self.handoff = HandoffDriver(
            pool, dispatcher, self.metrics, self._moved, self._fail, link_policy
        )

    # -- requests in ------------------------------------------------------------------------

    def submit(
        self, job: GenerationJob, bound: SLOClass | None, arrival_s: float
    ) -> list[RequestStream]:
        """`plan` then `start`, for callers already off the event loop's critical path."""
        return self.start(job, self.plan(job, bound), arrival_s)

    def plan(self, job: GenerationJob, bound: SLOClass | None) -> Plan:
        """Validate and tokenise every prompt, checking each one's length as soon as it is
        tokenised. Touches no shared state, so the server runs it in a worker thread and a big
        prompt cannot stall the event loop. Raises `APIError` 4xx."""
        self.check_model(job.model)
        slo = self.access.resolve(job.slo, bound)
        inputs: list[Prompt | None] = list(job.prompts) or [None]  # None: the chat
        limits.check_num_samples(job, len(inputs))
        prompts = []
        for prompt in inputs:
            token_ids, param = self._tokenize(job, prompt)
            max_context = self.pool.max_context_len
            max_tokens = limits.check_length(job, len(token_ids), param, max_context)
            prompts.append((token_ids, job.sampling_params(max_tokens)))
        return Plan(slo, prompts)

    def start(self, job: GenerationJob, plan: Plan, arrival_s: float) -> list[RequestStream]:
        """Dispatch every prompt's `n` samples, each as its own request (so dispatcher and
        scheduler see the work they are; sample i is seeded seed + i). The streams share one
        queue, in choice order. Raises 503 when turned away, after aborting the samples
        already sent."""
        if self.draining:
            raise shutting_down()
        queue: asyncio.Queue[OutputDelta] = asyncio.Queue()
        streams: list[RequestStream] = []
        try:
            for prompt_index, (token_ids, params) in enumerate(plan.prompts):
                for sample in range(params.n):
                    sample_params = params.for_sample(sample) if params.n > 1 else params
                    stream = self._dispatch(
                        job, token_ids, sample_params, plan.slo, arrival_s, queue
                    )
                    stream.prompt_index = prompt_index
                    streams.append(stream)
        except APIError:
            for stream in streams:
                self.abort(stream)
            raise
        return streams

    def check_model(self, model: str | None) -> None:
        """404 unless `model` is None or a name this server answers to."""
        if model is not None and model not in self.model_aliases:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_token_ids(self, token_ids: list[int], param: str) -> None:
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise bad_request(
                    f"token id {token_id} in {param!r} is outside the vocabulary of "
                    f"{self.vocab_size} tokens",
                    param,
                )

    def encode_chat(self, chat: ChatInput, add_special_tokens: bool) -> list[int]:
        """The conversation through its chat template; 400 naming what failed."""
        try:
            return self.tokenizer.encode_chat(
                chat.messages,
                chat.add_generation_prompt,
                chat_template=chat.template,
                add_special_tokens=add_special_tokens,
                **chat.template_kwargs,
            )
        except ValueError as exc:
            param = "messages" if chat.template is None else "chat_template"
            raise bad_request(str(exc), param) from None

    def _dispatch(
        self,
        job: GenerationJob,
        token_ids: list[int],
        params: SamplingParams,
        slo: SLO,
        arrival_s: float,
        queue: asyncio.Queue[OutputDelta],
    ) -> RequestStream:
        if self.num_queued >= self.queue_bound():
            self.metrics.on_rejected(slo.class_name, "queue")
            raise overloaded(f"server busy: {self.num_queued} requests already queued")
        prefix = "cmpl" if job.kind == "completion" else "chatcmpl"
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        request = DispatchRequest(request_id, len(token_ids), params.max_tokens, slo, arrival_s)
        instance_id, reason = self.handoff.route(request, token_ids, params, time.monotonic())
        if instance_id is None and not self.pool.live():
            self.metrics.on_rejected(slo.class_name, "dispatch")
            raise overloaded("no instance is serving now (failed ones restart)", "unavailable")
        if instance_id is None:
            self.metrics.on_rejected(slo.class_name, "dispatch")
            raise overloaded(f"no instance can meet this request's SLO now ({reason})")
        handle = self.pool.get(instance_id)
        stream = RequestStream(
            request_id, handle.instance_id, slo, len(token_ids), arrival_s, queue=queue
        )
        stream.prompt_token_ids = token_ids
        self.streams[request_id] = stream
        self.num_queued += 1
        handle.num_dispatched += 1
        handle.send(AddRequest(request_id, token_ids, params, slo, arrival_s))
        return stream

    def queue_bound(self) -> float:
        """Most requests that may wait for a first token: `--max-queued`, else a batch's worth
        per live instance (at least one instance's, so a restart does not refuse everything)."""
        if self.max_queued is not None:
            return self.max_queued
        if self.max_queued_per_instance is None:
            return float("inf")
        return self.max_queued_per_instance * max(1, len(self.pool.live()))

    def _tokenize(self, job: GenerationJob, prompt: Prompt | None) -> tuple[list[int], str]:
        if prompt is None:
            assert job.chat is not None
            return self.encode_chat(job.chat, job.add_special_tokens), "messages"
        if prompt.text is not None:
            max_context = self.pool.max_context_len
            limits.check_text_length(
                self.tokenizer, prompt.text, job.add_special_tokens, max_context
            )
            return self.tokenizer.encode(prompt.text, job.add_special_tokens), "prompt"
        token_ids = prompt.token_ids or []
        limits.check_length(job, len(token_ids), "prompt", self.pool.max_context_len)  # first
        self.check_token_ids(token_ids, "prompt")
        return token_ids, "prompt"

    def abort(self, stream: RequestStream) -> None:
        """The client went away: stop the request in its instance (frees its KV next loop)."""
        if stream.finished:
            return
        self._close(stream)
        self.metrics.on_aborted(stream.instance_id, stream.slo.class_name)
        self.handoff.abort(stream.request_id, time.monotonic())  # wherever it is, both sides

    def _close(self, stream: RequestStream) -> None:
        stream.finished = True
        self.streams.pop(stream.request_id, None)
        if not stream.has_first_token:
            stream.has_first_token = True  # no longer queued
            self.num_queued -= 1

    # -- reports back -----------------------------------------------------------------------

    def on_report(self, handle: InstanceHandle, report: StepReport) -> None:
        now = time.monotonic()
        metrics = self.metrics
        metrics.observe_instance(handle)
        for delta in report.deltas:
            stream = self.streams.get(delta.request_id)
            if stream is None or stream.instance_id != handle.instance_id:
                continue  # aborted meanwhile, or moved off a failed instance
            if delta.token_ids and not stream.has_first_token:
                stream.has_first_token = True
                self.num_queued -= 1
                metrics.on_first_token(
                    stream.instance_id,
                    stream.slo.class_name,
                    now - stream.arrival_s,
                    stream.num_prompt_tokens,
                )
            if delta.token_ids:
                metrics.on_tokens(
                    stream.instance_id, len(delta.token_ids), delta.inter_token_latency_s
                )
            if delta.finished:
                metrics.on_finished(stream.instance_id, stream.slo, delta, now - stream.arrival_s)
                self._close(stream)
            self.handoff.on_delta(delta, now)
            stream.queue.put_nowait(delta)
        self.handoff.on_report(handle, report, now)  # P/D: KV ready, pulls ended, leases
        if self.shared_correction is not None:
            live = self.pool.live()
            self.shared_correction.factor = sum(h.correction_factor for h in live) / len(live)

    def on_exit(self, handle: InstanceHandle, reason: str = "stopped unexpectedly") -> None:
        """An instance process died (`server/health.py` kills a silent one first): what it
        held without a first token is sent again, what had streamed resumes elsewhere; what
        cannot go on ends with an error (503 before any output: nowhere could take it)."""
        message = f"instance {handle.instance_id} failed ({reason})"
        now = time.monotonic()
        self.handoff.on_exit(handle, now)
        for stream in [s for s in self.streams.values() if s.instance_id == handle.instance_id]:
            self._fail(stream.request_id, message, now, 500 if stream.has_first_token else 503)
        self.metrics.remove_instance(handle.instance_id)

    def fail(self, streams: list[RequestStream], message: str, status: int = 500) -> None:
        """End `streams` with an error now (a timeout, shutdown): the client gets `status`
        before any output, an error event and [DONE] after; their instances free their KV."""
        now = time.monotonic()
        for stream in streams:
            if not stream.finished:
                self._fail(stream.request_id, message, now, status)
                self.handoff.abort(stream.request_id, now)  # wherever it is, both sides

    def _fail(
        self, request_id: str, message: str, now: float | None = None, status: int = 500
    ) -> None:
        """End a request's stream with an error (its instance died, nowhere can go on, or
        `fail`): `status` is the HTTP status it gets before any output."""
        stream = self.streams.get(request_id)
        if stream is None:
            return
        now = time.monotonic() if now is None else now
        delta = OutputDelta(stream.request_id, [], "", "error", error=message, error_status=status)
        self.metrics.on_finished(stream.instance_id, stream.slo, delta, now - stream.arrival_s)
        self._close(stream)
        stream.queue.put_nowait(delta)

    def _moved(self, request_id: str, instance_id: str) -> None:
        """The request now runs on `instance_id` (handed off, or sent again)."""
        stream = self.streams.get(request_id)
        if stream is not None:
            stream.instance_id = instance_id

    def fail_all(self, message: str) -> None:
        """The server is stopping: end every open request (503: retry elsewhere)."""
        self.fail(list(self.streams.values()), message, 503)
