"""`LLM`: offline batch generation on one instance, with the call shapes vLLM users know.

llm = LLM()  # the embedded tiny default model on CPU
outputs = llm.generate(["Hello", "The sky is"], SamplingParams(max_tokens=32))
print(outputs[0].outputs[0].text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hyperflexis.core.outputs import CompletionOutput, RequestMetrics, RequestOutput
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO, SLOClasses
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.perf.base import StepCostModel
from hyperflexis.scheduler import SchedulerConfig

PromptInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
ChatMessages = list[dict[str, str]]

_DEFAULT_CHUNKED_TOKEN_BUDGET = 2048  # vLLM's default step budget with chunked prefill


class LLM:
    """One engine instance for offline generation: load a model, submit prompts, wait."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        tokenizer: str | Path | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        served_model_name: str | None = None,
        policy: str = "fcfs",
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int = 256,
        enable_chunked_prefill: bool = True,
        kv_cache_bytes: int | None = None,
        block_size: int = 16,
        seed: int = 0,
        slo_classes: SLOClasses | None = None,
        cost_model: StepCostModel | None = None,
        clock: Callable[[], float] = time.monotonic,
        **unsupported: Any,
    ) -> None:
        """`model` is a Hugging Face checkpoint directory, or None for the embedded default;
        `tokenizer` another folder to take the tokenizer from. `dtype` "auto" is float32 on the
        CPU, the checkpoint's dtype on a GPU. `max_num_batched_tokens` None means 2048 with
        chunked prefill, else the whole context (so any prompt fits one step). vLLM's other
        constructor arguments are refused by name."""
        if unsupported:
            names = ", ".join(sorted(unsupported))
            raise ValueError(f"LLM() does not support these vLLM arguments: {names}")
        if max_num_batched_tokens is None:  # without chunking build_engine fits the context
            max_num_batched_tokens = _DEFAULT_CHUNKED_TOKEN_BUDGET
        spec = InstanceSpec(
            instance_id="offline",
            model=None if model is None else str(model),
            policy=policy,
            scheduler_config=SchedulerConfig(
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
                chunked_prefill=enable_chunked_prefill,
            ),
            cost_model=cost_model,
            dtype=dtype,
            device=device,
            kv_cache_bytes=kv_cache_bytes,
            block_size=block_size,
            seed=seed,
            tokenizer=None if tokenizer is None else str(tokenizer),
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.engine, self.runner, _ = build_engine(spec, clock)
        self.slo_classes = slo_classes
        # The name vLLM reports the model by; the checkpoint folder's name by default.
        self.served_model_name = served_model_name or self.runner.model_path.name

    def get_tokenizer(self) -> Any:
        return self.runner.tokenizer

    # -- generation -------------------------------------------------------------------------

    def generate(
        self,
        prompts: PromptInput,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        slos: SLO | str | Sequence[SLO | str | None] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt; one finished output per prompt, in input order.

        `prompts` is a string, a list of strings, a list of token ids, or a list of such lists.
        `sampling_params` and `slos` are one value for all prompts or a list, one per prompt.
        """
        texts, token_lists = self._tokenize(prompts)
        params = _per_prompt(sampling_params, len(token_lists), "sampling_params", SamplingParams)
        slo_list = _per_prompt(slos, len(token_lists), "slos", (SLO, str))
        resolved = [self._resolve_slo(s) for s in slo_list]
        return self._run(texts, token_lists, params, resolved, use_tqdm)

    def chat(
        self,
        messages: ChatMessages | Sequence[ChatMessages],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        slos: SLO | str | Sequence[SLO | str | None] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of `{"role", "content"}` messages) or to
        a list of conversations, through the model's chat template."""
        if not isinstance(messages, Sequence) or not messages:
            raise ValueError("invalid 'messages': expected a non-empty list of messages")
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        texts: list[str | None] = []
        token_lists: list[list[int]] = []
        for conversation in conversations:
            if not isinstance(conversation, list) or not all(
                isinstance(m, dict) for m in conversation
            ):
                raise ValueError("invalid 'messages': each conversation is a list of dicts")
            rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
            if isinstance(rendered, str):
                texts.append(rendered)
                # The template writes its own BOS, so the tokenizer must not add another.
                token_lists.append(list(tokenizer.encode(rendered, add_special_tokens=False)))
            else:
                texts.append(None)
                token_lists.append(list(rendered))
        params = _per_prompt(sampling_params, len(token_lists), "sampling_params", SamplingParams)
        slo_list = _per_prompt(slos, len(token_lists), "slos", (SLO, str))
        resolved = [self._resolve_slo(s) for s in slo_list]
        return self._run(texts, token_lists, params, resolved, use_tqdm)

    # -- internals --------------------------------------------------------------------------

    def _run(
        self,
        texts: list[str | None],
        token_lists: list[list[int]],
        params: list[SamplingParams | None],
        slos: list[SLO | None],
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        """Each prompt runs as `n` engine requests (sample i with seed + i), so the scheduler
        sees the n samples as the work they are; their outputs merge into one per prompt."""
        engine = self.engine
        ids: list[str] = []
        groups: list[list[str]] = []
        try:
            for text, token_ids, sampling, slo in zip(
                texts, token_lists, params, slos, strict=True
            ):
                samples = [sampling] if sampling is None else _samples(sampling)
                group = [engine.add_request(token_ids, p, slo=slo, prompt=text) for p in samples]
                ids.extend(group)
                groups.append(group)
            final = self._wait(ids, use_tqdm)
        except BaseException:
            for request_id in ids:  # leave the engine empty for the next call
                engine.abort(request_id)
            raise
        outputs = [_merge([final[request_id] for request_id in group]) for group in groups]
        self._decode_logprobs(outputs)
        return outputs

    def _decode_logprobs(self, outputs: list[RequestOutput]) -> None:
        """Fill in each logprob entry's token text, as vLLM's outputs carry it."""
        tokenizer = self.get_tokenizer()
        for output in outputs:
            entries = [e for e in output.prompt_logprobs or () if e is not None]
            for completion in output.outputs:
                entries.extend(completion.logprobs or ())
            for entry in entries:
                for token_id, logprob in entry.items():
                    logprob.decoded_token = tokenizer.decode([token_id], False)

    def _wait(self, ids: list[str], use_tqdm: bool) -> dict[str, RequestOutput]:
        engine = self.engine
        pending = set(ids)
        final: dict[str, RequestOutput] = {}
        progress = _progress(len(ids)) if use_tqdm else None
        try:
            while pending:
                outputs = engine.step()
                if not outputs and engine.last_step.num_tokens == 0:
                    raise RuntimeError(
                        f"the {engine.scheduler.name!r} scheduler ran an empty step with "
                        f"{len(pending)} requests unfinished; they cannot fit this instance"
                    )
                for output in outputs:
                    if output.finished and output.request_id in pending:
                        pending.discard(output.request_id)
                        final[output.request_id] = output
                        if progress is not None:
                            progress.update(1)
        finally:
            if progress is not None:
                progress.close()
        return final

    def _tokenize(self, prompts: PromptInput) -> tuple[list[str | None], list[list[int]]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence):
            raise ValueError(
                "invalid 'prompts': expected a string, a list of strings or of token-id lists"
            )
        items = list(prompts)
        if items and all(isinstance(p, int) and not isinstance(p, bool) for p in items):
            items = [items]  # one prompt given as token ids
        tokenizer = self.get_tokenizer()
        texts: list[str | None] = []
        token_lists: list[list[int]] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                texts.append(item)
                token_lists.append(list(tokenizer.encode(item, add_special_tokens=True)))
            elif isinstance(item, Sequence):
                texts.append(None)
                token_lists.append(list(item))
            else:
                raise ValueError(
                    f"invalid 'prompts[{index}]': expected a string or a list of token ids, "
                    f"got {type(item).__name__}"
                )
        return texts, token_lists

    def _resolve_slo(self, slo: SLO | str | None) -> SLO | None:
        if isinstance(slo, SLO):
            return slo
        if slo is None:
            return None if self.slo_classes is None else self.slo_classes.resolve()
        classes = self.slo_classes if self.slo_classes is not None else SLOClasses()
        return classes.resolve(slo)


def _per_prompt(
    value: object, num_prompts: int, name: str, kind: type | tuple[type, ...]
) -> list[Any]:
    """One value for all prompts, or a list with one per prompt."""
    if value is None or isinstance(value, kind):
        return [value] * num_prompts
    if not isinstance(value, Sequence):
        raise ValueError(f"invalid {name!r}: expected one value or a list of them")
    values = list(value)
    if len(values) != num_prompts:
        raise ValueError(
            f"invalid {name!r}: {len(values)} values for {num_prompts} prompts; "
            "give one for all or one per prompt"
        )
    for index, item in enumerate(values):
        if item is not None and not isinstance(item, kind):
            raise ValueError(f"invalid '{name}[{index}]': got {type(item).__name__}")
    return values


def _samples(params: SamplingParams) -> list[SamplingParams]:
    if params.n == 1:
        return [params]
    return [params.for_sample(i) for i in range(params.n)]


def _merge(samples: list[RequestOutput]) -> RequestOutput:
    """One prompt's samples as one output: completions indexed by sample, the first sample's
    id, the earliest first schedule and token, the latest last token and finish; attained when
    every sample was."""
    if len(samples) == 1:
        return samples[0]
    first = samples[0]
    completions: list[CompletionOutput] = []
    for index, sample in enumerate(samples):
        (completion,) = sample.outputs
        completion.index = index
        completions.append(completion)
    stamps = [s.metrics for s in samples]
    metrics = RequestMetrics(
        arrival_s=min(m.arrival_s for m in stamps),
        first_scheduled_s=_earliest([m.first_scheduled_s for m in stamps]),
        first_token_s=_earliest([m.first_token_s for m in stamps]),
        last_token_s=_latest([m.last_token_s for m in stamps]),
        finish_s=_latest([m.finish_s for m in stamps]),
        num_preemptions=sum(m.num_preemptions for m in stamps),
        # The longest sample's tokens over the group's first token to its last finish.
        num_output_tokens=max(m.num_output_tokens for m in stamps),
    )
    return RequestOutput(
        request_id=first.request_id,
        prompt=first.prompt,
        prompt_token_ids=first.prompt_token_ids,
        outputs=completions,
        finished=all(s.finished for s in samples),
        metrics=metrics,
        attained=all(bool(s.attained) for s in samples),
        prompt_logprobs=first.prompt_logprobs,
    )


def _earliest(times: list[float | None]) -> float | None:
    """The first of the samples' stamps; None until every sample has one."""
    known = [t for t in times if t is not None]
    return min(known) if len(known) == len(times) else None


def _latest(times: list[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if len(known) == len(times) else None


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="Generating", unit="req")
