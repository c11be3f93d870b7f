"""One entry point that composes arrivals, lengths and an SLO mix into a seeded `Workload`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hyperflexis.workloads._checks import check_int
from hyperflexis.workloads.arrivals import ArrivalProcess, arrivals_from_rng, with_rate
from hyperflexis.workloads.lengths import LengthDistribution, fit_lengths
from hyperflexis.workloads.slo_mix import SLOMix, assign_classes_from_rng
from hyperflexis.workloads.spec import RequestSpec, Workload, make_workload, request_ids
from hyperflexis.workloads.trace import Trace, read_azure_trace, scale_to_rate

# Independent streams per component, so that changing, say, the output lengths leaves the arrivals
# and the classes of the same seed as they were.
_ARRIVALS, _PROMPTS, _OUTPUTS, _CLASSES = range(4)


def build_workload(
    *,
    seed: int,
    slo_mix: SLOMix,
    trace: Trace | str | Path | None = None,
    arrival: ArrivalProcess | None = None,
    prompt_lens: LengthDistribution | None = None,
    output_lens: LengthDistribution | None = None,
    num_requests: int | None = None,
    rate_rps: float | None = None,
    length_scale: float | None = None,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    max_total_len: int | None = None,
    id_prefix: str = "req-",
) -> Workload:
    """A workload from a trace or from synthetic distributions, with classes from `slo_mix`.

    Trace mode (`trace` is a `Trace` or a CSV path): its first `num_requests` rows (all when
    None), time-scaled to `rate_rps` when given. Synthetic mode: `num_requests` arrivals from
    `arrival` (at `rate_rps` instead of its own rate when given) with lengths from `prompt_lens`
    and `output_lens`. In both, lengths then go through `fit_lengths` (`length_scale`, the
    maxima), and ids are `id_prefix` plus a zero-padded index in arrival order. The same
    arguments always give the same workload.
    """
    check_int(seed, "seed", minimum=0)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    if trace is not None:
        synthetic = {"arrival": arrival, "prompt_lens": prompt_lens, "output_lens": output_lens}
        for name, value in synthetic.items():
            if value is not None:
                raise ValueError(f"invalid parameter {name!r}: not used with a trace")
        arrivals, prompts, outputs = _from_trace(trace, num_requests, rate_rps)
    else:
        if arrival is None or prompt_lens is None or output_lens is None or num_requests is None:
            raise ValueError(
                "invalid parameters: give 'trace', or all of 'arrival', 'prompt_lens', "
                "'output_lens' and 'num_requests'"
            )
        if rate_rps is not None:
            arrival = with_rate(arrival, rate_rps)
        arrivals = arrivals_from_rng(arrival, num_requests, rngs[_ARRIVALS])
        prompts = prompt_lens.sample(num_requests, rngs[_PROMPTS])
        outputs = output_lens.sample(num_requests, rngs[_OUTPUTS])
    prompts, outputs = fit_lengths(
        prompts,
        outputs,
        length_scale=length_scale,
        max_prompt_len=max_prompt_len,
        max_output_len=max_output_len,
        max_total_len=max_total_len,
    )
    classes = assign_classes_from_rng(slo_mix, len(arrivals), rngs[_CLASSES])
    ids = request_ids(len(arrivals), id_prefix)
    return make_workload(
        RequestSpec(
            request_id=ids[i],
            arrival_s=float(arrivals[i]),
            prompt_len=int(prompts[i]),
            output_len=int(outputs[i]),
            slo_class=classes[i],
        )
        for i in range(len(arrivals))
    )


def _from_trace(
    trace: Trace | str | Path, num_requests: int | None, rate_rps: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if num_requests is not None:
        check_int(num_requests, "num_requests", minimum=0)
    if not isinstance(trace, Trace):
        trace = read_azure_trace(trace, max_requests=num_requests)
    count = trace.num_requests if num_requests is None else min(num_requests, trace.num_requests)
    arrivals = trace.arrivals_s[:count]
    if rate_rps is not None:
        arrivals = scale_to_rate(arrivals, rate_rps)
    return arrivals, trace.prompt_lens[:count], trace.output_lens[:count]


def concat_phases(phases: Sequence[tuple[Workload, float]]) -> Workload:
    """Phases one after another: each `(workload, duration_s)` keeps its arrivals before
    `duration_s` and starts when the previous phase ends (e.g. a shift from prompt-heavy to
    decode-heavy traffic). Request ids must differ across phases."""
    specs: list[RequestSpec] = []
    start_s = 0.0
    for workload, duration_s in phases:
        specs += [
            dataclasses.replace(s, arrival_s=s.arrival_s + start_s)
            for s in workload
            if s.arrival_s < duration_s
        ]
        start_s += duration_s
    return make_workload(specs)
