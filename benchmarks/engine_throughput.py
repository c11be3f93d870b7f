"""Output tokens/s of our engine against transformers' `generate`, same model, same prompts.

64 requests with prompt and output lengths drawn from the Azure 2023 conversation trace, scaled
by one common factor so the longest prompt+output fits `--max-len` tokens (the distribution's
shape is kept). Ours: all requests submitted at once, greedy, `ignore_eos` so every request
produces exactly its output length. transformers: the same prompts in static batches by arrival
order, left padded, each batch running to its longest output; only the tokens a request asked for
count as output. Also our median per-step time outside the model runner (schedule + update +
output processing). Target: ours >= 2x transformers.

    .venv/bin/python benchmarks/engine_throughput.py [--trace PATH] [--batch-size 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperflexis import LLM, SamplingParams
from hyperflexis.engine import bytes_per_block

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
DEFAULT_TRACE = DEFAULT_TRACE / "azure_llm_2023_conv.csv"
FIRST_ORDINARY_TOKEN = 3  # ids below are BOS/EOS/PAD in the built-in model


@dataclass(frozen=True, slots=True)
class Workload:
    prompts: list[list[int]]  # token ids, in arrival order
    output_lens: list[int]  # tokens each request generates
    scale: float  # trace lengths were divided by this

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def load_workload(
    trace: Path, num_requests: int, max_model_len: int, vocab_size: int, seed: int
) -> Workload:
    """Sample trace rows (seeded), scale their lengths to fit the context, random token ids."""
    with trace.open(newline="") as f:
        rows = [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]
    if len(rows) < num_requests:
        raise ValueError(f"trace {trace} has {len(rows)} rows, need {num_requests}")
    rng = random.Random(seed)
    picked = [rows[i] for i in sorted(rng.sample(range(len(rows)), num_requests))]
    scale = max(1.0, max(p + o for p, o in picked) / max_model_len)
    prompt_lens = [max(1, math.floor(p / scale)) for p, _ in picked]
    output_lens = [max(1, math.floor(o / scale)) for _, o in picked]
    for i, (p, o) in enumerate(zip(prompt_lens, output_lens, strict=True)):
        if p + o > max_model_len:  # flooring keeps this from happening; belt and braces
            output_lens[i] = max(1, max_model_len - p)
    prompts = [
        [rng.randrange(FIRST_ORDINARY_TOKEN, vocab_size) for _ in range(n)] for n in prompt_lens
    ]
    return Workload(prompts, output_lens, scale)


def run_ours(llm: LLM, workload: Workload) -> tuple[float, list[float], list[float], int]:
    """Seconds for all requests, plus each step's overhead and execute seconds."""
    engine = llm.engine
    for prompt, output_len in zip(workload.prompts, workload.output_lens, strict=True):
        engine.add_request(
            prompt, SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
        )
    overheads, executes = [], []
    num_tokens = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        for output in engine.step():
            if output.finished:
                num_tokens += len(output.outputs[0].token_ids)
        overheads.append(engine.last_step.overhead_s)
        executes.append(engine.last_step.execute_s)
    return time.perf_counter() - start, overheads, executes, num_tokens


def run_transformers(
    model: torch.nn.Module, workload: Workload, batch_size: int, pad_id: int
) -> float:
    """Seconds for all requests in static batches by arrival order."""
    start = time.perf_counter()
    for first in range(0, len(workload.prompts), batch_size):
        prompts = workload.prompts[first : first + batch_size]
        longest_output = max(workload.output_lens[first : first + batch_size])
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=longest_output,
                min_new_tokens=longest_output,  # no early stop at EOS: the batch runs to the end
                do_sample=False,
                pad_token_id=pad_id,
            )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: built-in)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers' static batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-len",
        type=int,
        default=1024,
        help="longest prompt+output after scaling (capped at the model's context); the default "
        "keeps a CPU run to a few minutes and a left-padded batch within the context",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate the two engines this many times and keep each one's median run, so a "
        "burst of load from other processes on a shared machine hits both alike",
    )
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    probe = LLM(args.model, device=args.device, kv_cache_bytes=1 << 20)
    config = probe.runner.config
    workload = load_workload(
        args.trace,
        args.num_requests,
        min(args.max_len, probe.runner.max_model_len),
        config.vocab_size,
        args.seed,
    )
    # Enough KV for every request at once, so the comparison is batching, not memory.
    total_tokens = sum(
        len(p) + o for p, o in zip(workload.prompts, workload.output_lens, strict=True)
    )
    block_size = probe.runner.block_size
    kv_bytes = (total_tokens // block_size + 2 * args.num_requests) * bytes_per_block(
        config, block_size, probe.runner.dtype
    )
    del probe
    llm = LLM(
        args.model, device=args.device, kv_cache_bytes=kv_bytes, max_num_seqs=args.num_requests
    )
    model_path = llm.runner.model_path
    hf_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(args.device)
    hf_model.eval()
    pad_id = config.eos_token_ids[0] if config.eos_token_ids else 0

    prompt_lens = [len(p) for p in workload.prompts]
    print(
        f"{args.num_requests} requests from {args.trace.name}, lengths / {workload.scale:.2f}: "
        f"prompt mean {statistics.mean(prompt_lens):.0f} (max {max(prompt_lens)}), output mean "
        f"{statistics.mean(workload.output_lens):.0f} (max {max(workload.output_lens)}), "
        f"{workload.num_output_tokens} output tokens; model {model_path.name} on {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    # Warm both up (first calls pay one-off setup).
    llm.generate([workload.prompts[0][:32]], SamplingParams(max_tokens=4, temperature=0.0))
    warm = Workload(workload.prompts[:2], [4, 4], workload.scale)
    run_transformers(hf_model, warm, 2, pad_id)

    ours_runs, hf_runs = [], []
    overheads: list[float] = []
    executes: list[float] = []
    for _ in range(args.rounds):
        ours_s, overheads, executes, ours_tokens = run_ours(llm, workload)
        assert ours_tokens == workload.num_output_tokens, (ours_tokens, workload.num_output_tokens)
        ours_runs.append(ours_s)
        hf_runs.append(run_transformers(hf_model, workload, args.batch_size, pad_id))
    ours_s, hf_s = statistics.median(ours_runs), statistics.median(hf_runs)
    ours_tps = workload.num_output_tokens / ours_s
    hf_tps = workload.num_output_tokens / hf_s
    print(
        f"hyperflexis : {ours_s:7.2f} s  {ours_tps:8.1f} output tok/s  ({len(executes)} steps, "
        f"{llm.engine.scheduler.num_preemptions} preemptions; median of {args.rounds} runs)"
    )
    print(
        f"transformers: {hf_s:7.2f} s  {hf_tps:8.1f} output tok/s  (static batches of "
        f"{args.batch_size}, left padded; median of {args.rounds} runs)"
    )
    ratio = ours_tps / hf_tps
    overhead_ms = statistics.median(overheads) * 1e3
    execute_ms = statistics.median(executes) * 1e3
    overhead_share = sum(overheads) / (sum(overheads) + sum(executes))
    print(
        f"per step: median overhead {overhead_ms:.3f} ms outside the model runner, median "
        f"execute {execute_ms:.2f} ms; overhead is {overhead_share:.1%} of engine time"
    )
    verdict = "meets" if ratio >= 2.0 else "misses"
    print(
        f"SUMMARY engine_throughput: hyperflexis {ours_tps:.1f} tok/s vs transformers "
        f"{hf_tps:.1f} tok/s = {ratio:.2f}x ({verdict} the 2x target); median step overhead "
        f"{overhead_ms:.3f} ms"
    )


if __name__ == "__main__":
    main()
