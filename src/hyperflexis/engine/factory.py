"""Builds one instance's engine: model runner, KV block manager, scheduler policy, engine loop.
Used by the offline `LLM` and by every server instance process, so both run the same wiring.

`InstanceSpec` is picklable, so the server hands it to each spawned instance process, which
builds its own engine (torch state never crosses a process boundary).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from hyperflexis.engine.loop import LLMEngine, StepObserver
from hyperflexis.engine.step_profiler import cached_cost_model
from hyperflexis.perf.base import StepCostModel
from hyperflexis.perf.online import OnlineCorrection
from hyperflexis.scheduler import (
    KVBlockManager,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    make_scheduler,
    policy_class,
)

if TYPE_CHECKING:
    from hyperflexis.engine import ModelRunner
    from hyperflexis.engine.model_runner import KVStorage
    from hyperflexis.transfer.instance_weights import InstanceWeights
    from hyperflexis.transfer.weights import WeightManifest


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything an instance needs to build its engine."""

    instance_id: str
    model: str | None  # checkpoint folder; None: the built-in tiny model
    policy: str  # scheduling policy name
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Step latency model for policies that need one; None: the model's cached profile on this
    # device (profiled once when missing).
    cost_model: StepCostModel | None = None
    dtype: str = "float32"
    device: str = "cpu"
    kv_cache_bytes: int | None = None  # None: the runner's default
    block_size: int = 16
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    tokenizer: str | None = None  # tokenizer folder; None: the model's
    max_model_len: int | None = None  # a context shorter than the model's; None: the model's
    gpu_memory_utilization: float | None = None  # share of the GPU; None: half of what is free
    kv_transport: str = "shm"  # KV transport its pool registers with (P/D); see transfer/
    # Register the KV pool with the transport even in the collocated role, so a drain can
    # migrate its decodes KV and all (serve --scaler); prefill and decode instances always do.
    kv_pool_always: bool = False
    kv_transfer_timeout_s: float = 10.0  # a pull slower than this is abandoned for a recompute
    # Where the weights come from (transfer/weights.py): "disk", or "peer" (`peer_weights`, a
    # live instance's published segment), which falls back to disk on any mismatch or failure.
    weight_source: str = "disk"
    peer_weights: WeightManifest | None = None
    publish_weights: bool = False  # publish its weights for peers (InstanceReady.weights_manifest)


class BuiltEngine(NamedTuple):
    engine: LLMEngine
    runner: ModelRunner  # the engine's, typed as the concrete runner (tokenizer, model path)
    cost_model: OnlineCorrection | None  # online-corrected; None when the policy needs none


def build_engine(
    spec: InstanceSpec,
    clock: Callable[[], float] = time.monotonic,
    kv_storage: KVStorage | None = None,
    weights: InstanceWeights | None = None,
) -> BuiltEngine:
    """The instance's engine, runner and online-corrected latency model. Each instance corrects
    its own copy: instances on one host slow each other down unevenly. `kv_storage`: the KV
    cache's memory (a KV transport's `allocate`); None: the runner's own. `weights`: the loader,
    to read where the weights came from afterwards; None: one for `spec.weight_source`."""
    needs_cost_model = policy_class(spec.policy).needs_cost_model  # unknown names fail first
    from hyperflexis.engine import IncrementalDetokenizer, ModelRunner
    from hyperflexis.transfer.instance_weights import InstanceWeights

    if weights is None:
        weights = InstanceWeights(spec.weight_source, spec.peer_weights, spec.publish_weights)

    if spec.num_threads is not None:
        import torch

        torch.set_num_threads(spec.num_threads)
    runner = ModelRunner(
        spec.model,
        dtype=spec.dtype,
        device=spec.device,
        kv_cache_bytes=spec.kv_cache_bytes,
        block_size=spec.block_size,
        seed=spec.seed,
        tokenizer=spec.tokenizer,
        max_model_len=spec.max_model_len,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        kv_storage=kv_storage,
        load=weights,
    )
    cost_model = spec.cost_model
    if cost_model is None and needs_cost_model:
        cost_model = cached_cost_model(runner, spec.device, runner.dtype_name)
    correction = None
    if cost_model is not None:
        correction = (
            cost_model if isinstance(cost_model, OnlineCorrection) else OnlineCorrection(cost_model)
        )
    scheduler = build_scheduler(spec, runner, correction)
    tokenizer = runner.tokenizer
    config_eos = list(runner.config.eos_token_ids)
    # The config's EOS ids first (the scheduler checks the first), then the tokenizer's others
    # (Llama 3's end-of-turn).
    eos_ids = [*config_eos, *sorted(runner.eos_token_ids - set(config_eos))]
    engine = LLMEngine(
        runner,
        scheduler,
        lambda prompt_ids, skip_special_tokens=True: IncrementalDetokenizer(
            tokenizer, prompt_ids, skip_special_tokens
        ),
        clock=clock,
        step_observer=None if correction is None else _observer(correction),
        eos_token_ids=eos_ids,
    )
    return BuiltEngine(engine, runner, correction)


def build_scheduler(
    spec: InstanceSpec, runner: ModelRunner, cost_model: StepCostModel | None
) -> Scheduler:
    """The instance's scheduler, in `spec.scheduler_config.role`, over a fresh block manager
    for the runner's KV cache: at start, and again for a role flip (an idle instance)."""
    config = spec.scheduler_config
    if not config.chunked_prefill and config.max_num_batched_tokens < runner.max_model_len:
        # Without chunking a whole prompt runs in one step: the budget must hold any prompt.
        config = dataclasses.replace(config, max_num_batched_tokens=runner.max_model_len)
    kv = KVBlockManager(runner.num_kv_blocks, runner.block_size)
    return make_scheduler(spec.policy, config, kv, cost_model)


def _observer(cost_model: OnlineCorrection) -> StepObserver:
    def observe(batch: SchedulerOutput, execute_s: float) -> None:
        cost_model.observe(batch.features(), execute_s)

    return observe
