"""Measures real engine steps over a grid of batch shapes, for the profiled latency model.

Each shape (prefill chunks `(new, ctx_before)` and decodes at context `ctx`) becomes a hand-built
`SchedulerOutput` whose block tables come from a throwaway `KVBlockManager`, so any shape can be
timed without running requests up to it. The KV contents are whatever the cache holds: the values
are meaningless, the work (and so the time) is the real step's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hyperflexis import env
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.perf.profiled import (
    ProfiledCostModel,
    ProfileSample,
    fit,
    load_profile,
    read_profile,
    write_profile,
)
from hyperflexis.scheduler import KVBlockManager, ScheduledChunk, SchedulerOutput
from hyperflexis.scheduler.kv_blocks import num_blocks_for

_GREEDY = SamplingParams(max_tokens=1, temperature=0.0)


class ProfiledRunner(Protocol):
    """What the profiler needs from `engine.ModelRunner`."""

    @property
    def num_kv_blocks(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...

    def execute(self, output: SchedulerOutput) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One step's batch, by size only."""

    prefills: tuple[tuple[int, int], ...] = ()  # (new tokens, context before them) per chunk
    decodes: tuple[int, ...] = ()  # context length of each decoding request

    def num_kv_tokens(self) -> list[int]:
        """Tokens each request of the batch holds in the KV cache after the step."""
        return [new + ctx for new, ctx in self.prefills] + [ctx + 1 for ctx in self.decodes]


@dataclass(frozen=True, slots=True)
class GridSpec:
    """Which shapes to time and how often."""

    prefill_tokens: tuple[int, ...]  # prefill chunk sizes
    prefill_contexts: tuple[int, ...]  # context before a prefill chunk
    decode_batch_sizes: tuple[int, ...]  # decodes per step
    decode_contexts: tuple[int, ...]  # context of every decode in the step
    mixed: tuple[tuple[int, int, int, int], ...]  # (decodes, decode ctx, prefill new, prefill ctx)
    num_warmup: int  # untimed runs per shape (allocator, caches, kernel selection)
    num_repeats: int  # timed runs per shape; the fastest is kept


FULL_GRID = GridSpec(
    prefill_tokens=(16, 64, 128, 256, 512, 1024, 2048, 4096),
    prefill_contexts=(0, 512, 2048),
    decode_batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    decode_contexts=(64, 512, 2048),
    mixed=(
        (4, 256, 256, 0),
        (16, 256, 512, 0),
        (16, 1024, 128, 512),
        (64, 256, 1024, 0),
        (64, 1024, 256, 1024),
        (128, 512, 512, 0),
    ),
    num_warmup=2,
    num_repeats=5,
)
QUICK_GRID = GridSpec(
    prefill_tokens=(16, 64, 256),
    prefill_contexts=(0, 256),
    decode_batch_sizes=(1, 8, 32),
    decode_contexts=(32, 256),
    mixed=((8, 128, 64, 0), (4, 64, 128, 128)),
    num_warmup=1,
    num_repeats=3,
)


def grid_shapes(
    spec: GridSpec, max_model_len: int, num_kv_blocks: int, block_size: int
) -> list[BatchShape]:
    """The spec's shapes that fit the model's context and the KV cache."""
    shapes = [
        BatchShape(prefills=((new, ctx),))
        for ctx in spec.prefill_contexts
        for new in spec.prefill_tokens
    ]
    shapes += [
        BatchShape(decodes=(ctx,) * size)
        for ctx in spec.decode_contexts
        for size in spec.decode_batch_sizes
    ]
    shapes += [
        BatchShape(prefills=((new, prefill_ctx),), decodes=(decode_ctx,) * size)
        for size, decode_ctx, new, prefill_ctx in spec.mixed
    ]
    return [s for s in shapes if _fits(s, max_model_len, num_kv_blocks, block_size)]


def _fits(shape: BatchShape, max_model_len: int, num_kv_blocks: int, block_size: int) -> bool:
    lengths = shape.num_kv_tokens()
    blocks = sum(num_blocks_for(n, block_size) for n in lengths)
    return max(lengths) <= max_model_len and blocks <= num_kv_blocks


def build_batch(
    shape: BatchShape, kv: KVBlockManager, vocab_size: int, rng: random.Random
) -> SchedulerOutput:
    """A step computing `shape`, with blocks from `kv` (the caller frees them)."""
    output = SchedulerOutput()
    requests = [(f"prefill-{i}", new, ctx) for i, (new, ctx) in enumerate(shape.prefills)]
    requests += [(f"decode-{i}", 1, ctx) for i, ctx in enumerate(shape.decodes)]
    for request_id, num_new, ctx in requests:
        output.chunks.append(
            ScheduledChunk(
                request_id=request_id,
                token_ids=[rng.randrange(vocab_size) for _ in range(num_new)],
                start_pos=ctx,
                block_ids=kv.allocate(request_id, ctx + num_new),
                sample=True,
                sampling_params=_GREEDY,
                num_output_tokens=0,
            )
        )
    return output


def time_shape(
    runner: ProfiledRunner,
    shape: BatchShape,
    vocab_size: int,
    num_warmup: int,
    num_repeats: int,
    rng: random.Random,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Fastest of `num_repeats` runs of the shape, in seconds. Other work on the machine only
    ever adds time, so the minimum is the shape's own cost (as `timeit` advises); a median
    keeps whatever a busy neighbour added when it lasts through most repeats, and one such
    profile misleads every scheduling decision after it. `execute` returns sampled token ids
    as Python ints, so the device has finished when it returns."""
    kv = KVBlockManager(runner.num_kv_blocks, runner.block_size)
    batch = build_batch(shape, kv, vocab_size, rng)
    for _ in range(num_warmup):
        runner.execute(batch)
    times = []
    for _ in range(num_repeats):
        start = clock()
        runner.execute(batch)
        times.append(clock() - start)
    return min(times)


def profile_steps(
    runner: ProfiledRunner,
    vocab_size: int,
    shapes: Sequence[BatchShape],
    num_warmup: int,
    num_repeats: int,
    seed: int = 0,
    on_sample: Callable[[ProfileSample], None] | None = None,
) -> list[ProfileSample]:
    """Time every shape; one sample per shape, in order."""
    rng = random.Random(seed)
    samples = []
    for shape in shapes:
        step_s = time_shape(runner, shape, vocab_size, num_warmup, num_repeats, rng)
        sample = ProfileSample(list(shape.prefills), list(shape.decodes), step_s)
        samples.append(sample)
        if on_sample is not None:
            on_sample(sample)
    return samples


class ProfileTarget(ProfiledRunner, Protocol):
    """A runner the profile cache can name: which model, on which device, in which dtype."""

    @property
    def model_path(self) -> Path: ...

    @property
    def config(self) -> _VocabConfig: ...


class _VocabConfig(Protocol):
    @property
    def vocab_size(self) -> int: ...


def default_profile_path(model_path: Path, device: str, dtype: str) -> Path:
    """Where a model's profile on a device is cached (DESIGN.md §3: per model and device)."""
    name = f"{model_path.name}-{device.replace(':', '')}-{dtype}.json"
    return env.cache_dir() / "profiles" / name


# How a shape's time is taken, recorded in every profile: a cached profile timed any other way
# (profiles before 2026-11-29 kept the median of the repeats) is stale and gets re-profiled.
TIMING = "min-of-repeats"


def is_current_profile(path: Path) -> bool:
    """Whether `path` holds a readable profile timed the current way."""
    try:
        return read_profile(path).meta.get("timing") == TIMING
    except (OSError, ValueError):
        return False


def run_profile(
    runner: ProfileTarget,
    spec: GridSpec,
    out: Path,
    meta: dict[str, object],
    seed: int = 0,
    on_sample: Callable[[ProfileSample], None] | None = None,
) -> tuple[ProfiledCostModel, float]:
    """Time the grid, fit the latency model, write the profile; returns (model, median error)."""
    shapes = grid_shapes(spec, runner.max_model_len, runner.num_kv_blocks, runner.block_size)
    if len(shapes) < 5:
        raise ValueError(
            f"only {len(shapes)} batch shapes fit this model's context and KV cache; "
            "need at least 5 to fit 5 coefficients (raise --kv-cache-bytes)"
        )
    samples = profile_steps(
        runner,
        runner.config.vocab_size,
        shapes,
        spec.num_warmup,
        spec.num_repeats,
        seed=seed,
        on_sample=on_sample,
    )
    model, median_rel_error = fit(samples)
    write_profile(out, samples, model, {"model": str(runner.model_path), **meta, "timing": TIMING})
    return model, median_rel_error


def cached_cost_model(runner: ProfileTarget, device: str, dtype: str) -> ProfiledCostModel:
    """The model's cached profile on this device, profiling it now (quick grid) if absent or
    stale."""
    path = default_profile_path(runner.model_path, device, dtype)
    if is_current_profile(path):
        return load_profile(path)
    meta: dict[str, object] = {"device": device, "dtype": dtype, "quick": True}
    model, _ = run_profile(runner, QUICK_GRID, path, meta)
    return model
