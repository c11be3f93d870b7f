"""How far the live engine's step times fall from its fitted latency model (issue 18, item 3).

Fits the profiled latency model of the default (embedded tiny) model on this machine's CPU, as
`hyperflexis serve` does when it has no cached profile (`hyperflexis profile --quick`; `--grid
full` for the full grid; `--profile PATH` to use an existing one), then runs the real engine
(`build_engine`, the hyperflexis policy, one torch thread as the server's instances have) on an
open-loop stream of requests with mixed prompt and output lengths and SLO classes, so its steps
are a mix of prefill, mixed and decode-only batches. For every step it records the measured time
and the fitted model's prediction for the batch, both as the engine's online correction sees it
(the whole cycle, from one step's start to the next's) and for the forward pass alone. Prints the
ratio measured / predicted: its mean (1 + bias: `simulate --profile-error`) and its coefficient
of variation around that mean (`simulate --step-noise`), overall and per kind of batch; and the
spread left around the same linear model refitted on the measured steps themselves (the noise a
perfect profile would still see; the rest is the profile's misfit).

    .venv/bin/python benchmarks/step_noise.py [--seconds 60] [--rate 15] [--grid quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hyperflexis.core import SamplingParams, SLOClasses
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.perf import StepCostModel, make_cost_model
from hyperflexis.perf.base import StepFeatures
from hyperflexis.perf.profiled import ProfileSample, fit
from hyperflexis.scheduler import SchedulerConfig, SchedulerOutput

CLASSES = ("interactive", "standard", "standard", "batch")  # roughly the 3:5:2 mix
WARMUP_STEPS = 20  # first steps (allocator, caches) not counted


def fitted_model(args: argparse.Namespace, workdir: Path) -> StepCostModel:
    if args.profile is not None:
        return make_cost_model("profiled", path=args.profile)
    from hyperflexis.engine import ModelRunner
    from hyperflexis.engine.step_profiler import FULL_GRID, QUICK_GRID, run_profile

    runner = ModelRunner(None, dtype="float32", device="cpu")
    grid = FULL_GRID if args.grid == "full" else QUICK_GRID
    path = workdir / "profile.json"
    _, error = run_profile(runner, grid, path, {"device": "cpu", "dtype": "float32"})
    print(f"fitted the {args.grid} grid: median relative fit error {error:.1%}")
    return make_cost_model("profiled", path=path)


def _kind(features: StepFeatures) -> str:
    if not features.num_prefill_tokens:
        return "decode-only"
    return "mixed" if features.num_decodes else "prefill-only"


class Recorder:
    """Each observed step's (kind, cycle ratio, forward-pass ratio), and the step itself as a
    profile sample (its cycle time) for the refit."""

    def __init__(self, model: StepCostModel) -> None:
        self.model = model
        self.steps: list[tuple[str, float, float]] = []
        self.samples: list[ProfileSample] = []
        self.execute_s = 0.0  # the latest step's forward pass, set after each step

    def observe(self, batch: SchedulerOutput, cycle_s: float) -> None:
        features = batch.features()
        predicted = self.model.predict(features)
        self.steps.append((_kind(features), cycle_s / predicted, self.execute_s / predicted))
        prefills = [(c.num_tokens, c.start_pos) for c in batch.chunks if not c.is_decode]
        decodes = [c.start_pos for c in batch.chunks if c.is_decode]
        self.samples.append(ProfileSample(prefills, decodes, cycle_s))


def run_stream(args: argparse.Namespace, model: StepCostModel) -> Recorder:
    import torch

    torch.set_num_threads(1)
    spec = InstanceSpec("noise-0", None, "hyperflexis", SchedulerConfig(), cost_model=model)
    engine = build_engine(spec).engine
    recorder = Recorder(model)
    observe = engine.step_observer
    assert observe is not None  # the policy needs a latency model, so it has an observer

    def both(batch: SchedulerOutput, cycle_s: float) -> None:
        observe(batch, cycle_s)
        recorder.observe(batch, cycle_s)

    engine.step_observer = both
    rng = random.Random(args.seed)
    classes = SLOClasses()
    vocab = engine.runner.config.vocab_size
    arrivals, t = [], 0.0
    while t < args.seconds:
        t += rng.expovariate(args.rate)
        arrivals.append(t)
    start = time.monotonic()
    deadline = start + args.seconds * 3  # the backlog drains within this, or is cut
    while (arrivals or engine.has_unfinished()) and time.monotonic() < deadline:
        now = time.monotonic() - start
        while arrivals and arrivals[0] <= now:
            arrivals.pop(0)
            prompt = [
                rng.randrange(vocab) for _ in range(min(1500, int(rng.lognormvariate(5, 0.9))))
            ]
            params = SamplingParams(
                max_tokens=min(300, int(rng.lognormvariate(3.5, 0.8)) + 1), ignore_eos=True
            )
            engine.add_request(prompt or [1], params, classes.resolve(rng.choice(CLASSES)))
        if engine.has_unfinished():
            engine.step()
            recorder.execute_s = engine.last_step.execute_s
        elif arrivals:
            time.sleep(max(0.0, min(0.05, arrivals[0] - now)))
    return recorder


def _summary(ratios: list[float]) -> str:
    mean = statistics.fmean(ratios)
    cv = statistics.pstdev(ratios) / mean
    q = statistics.quantiles(ratios, n=10)
    return (
        f"mean {mean:.3f} (bias {mean - 1:+.1%}), CV {cv:.3f}, p10 {q[0]:.3f}, "
        f"p50 {statistics.median(ratios):.3f}, p90 {q[-1]:.3f}"
    )


def report(recorder: Recorder) -> None:
    steps = recorder.steps[WARMUP_STEPS:]
    if len(steps) < 20:
        raise SystemExit(f"only {len(steps)} steps measured; raise --seconds or --rate")
    print(f"{len(steps)} steps (after {WARMUP_STEPS} warm-up), measured / fitted prediction:")
    print(f"  whole step cycle:   {_summary([c for _, c, _ in steps])}")
    print(f"  forward pass alone: {_summary([e for _, _, e in steps])}")
    for kind in ("prefill-only", "mixed", "decode-only"):
        mine = [c for k, c, _ in steps if k == kind]
        if len(mine) >= 10:
            print(f"  {kind:>12} ({len(mine):4d} steps), cycle: {_summary(mine)}")
    # The same linear model fitted on these very steps: what remains is the spread a perfect
    # profile would still see (step noise), the rest of the above is the profile's misfit.
    samples = recorder.samples[WARMUP_STEPS:]
    refit, _ = fit(samples)
    residual = [s.step_s / refit.predict(s.features) for s in samples]
    print(f"  refitted on these steps: {_summary(residual)}")
    cycles = [c for _, c, _ in steps]
    mean = statistics.fmean(cycles)
    print(
        f"simulate at it: --profile-error {mean - 1:.3f} "
        f"--step-noise {statistics.pstdev(cycles) / mean:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="arrivals for this long")
    parser.add_argument("--rate", type=float, default=15.0, help="requests/s")
    parser.add_argument("--grid", choices=("quick", "full"), default="quick")
    parser.add_argument("--profile", type=Path, default=None, help="a profile JSON to use")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        model = fitted_model(args, Path(workdir))
        report(run_stream(args, model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
