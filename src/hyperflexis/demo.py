"""`python -m hyperflexis.demo` (`make demo`): offline generation on the built-in tiny model.

Submits a handful of prompts with different SLO classes at once, prints each completion and a
per-request latency table. The built-in model has random weights, so the text is gibberish; the
point is the engine path (tokenizer, scheduler, paged KV cache, sampler) and its timings.
"""

from __future__ import annotations

import sys
import time

from hyperflexis.core.outputs import RequestOutput
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.llm import LLM

PROMPTS: tuple[tuple[str, str, int], ...] = (  # (prompt, SLO class, max tokens)
    ("Hello! How are you?", "interactive", 24),
    ("Once upon a time there was a little town by the sea.", "standard", 48),
    ("Please explain this idea in simple words:", "interactive", 32),
    ("The train leaves the station at half past eight", "batch", 64),
    ("What is the weather like today?", "standard", 40),
    ("A good summary is short, accurate and easy to read.", "batch", 56),
)


def main() -> int:
    started = time.perf_counter()
    llm = LLM(seed=0)
    loaded_s = time.perf_counter() - started
    # One short request first: torch's first calls pay one-off setup the table should not show.
    llm.generate("Hello", SamplingParams(max_tokens=2))
    print(
        f"HyperFlexis demo: {len(PROMPTS)} prompts on the built-in tiny model "
        f"({llm.runner.model_path}, loaded in {loaded_s:.1f} s), cpu, policy fcfs."
    )
    print("The model's weights are random, so the text is gibberish.\n")
    params = [
        SamplingParams(max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=i)
        for i, (_, _, max_tokens) in enumerate(PROMPTS)
    ]
    outputs = llm.generate(
        [prompt for prompt, _, _ in PROMPTS], params, slos=[c for _, c, _ in PROMPTS]
    )
    for i, output in enumerate(outputs):
        print(f"[{i}] {output.prompt!r}")
        print(f"    -> {output.outputs[0].text!r}")
    print()
    print(_table(outputs, [c for _, c, _ in PROMPTS]))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


def _table(outputs: list[RequestOutput], classes: list[str]) -> str:
    header = (
        f"{'#':>2}  {'class':<11} {'prompt':>6} {'output':>6} {'TTFT ms':>8} {'E2E ms':>8} "
        f"{'tok/s':>7}  {'finish':<6}  SLO met"
    )
    lines = [header, "-" * len(header)]
    for i, (output, slo_class) in enumerate(zip(outputs, classes, strict=True)):
        metrics = output.metrics
        completion = output.outputs[0]
        ttft_ms = (metrics.ttft_s or 0.0) * 1e3
        e2e_s = metrics.e2e_s or 0.0
        tokens_per_s = len(completion.token_ids) / e2e_s if e2e_s > 0 else 0.0
        lines.append(
            f"{i:>2}  {slo_class:<11} {len(output.prompt_token_ids):>6} "
            f"{len(completion.token_ids):>6} {ttft_ms:>8.1f} {e2e_s * 1e3:>8.1f} "
            f"{tokens_per_s:>7.1f}  {completion.finish_reason or '':<6}  "
            f"{'yes' if output.attained else 'no'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
