"""Builders and a tiny step driver for scheduler tests: a linear fake latency model, requests
with given SLOs, and a loop on a manual clock."""

from __future__ import annotations

from dataclasses import dataclass

from hyperflexis.core import SLO, LateAction, Request, SamplingParams
from hyperflexis.perf.base import StepFeatures
from hyperflexis.scheduler import KVBlockManager, Scheduler, SchedulerConfig, make_scheduler


@dataclass(frozen=True)
class LinearCost:
    """t = base + per-prefill-token + per-decode; monotone, so `largest_chunk` is exact."""

    base_s: float = 0.005
    prefill_token_s: float = 2e-5
    decode_s: float = 1e-4

    def predict(self, features: StepFeatures) -> float:
        return (
            self.base_s
            + self.prefill_token_s * features.num_prefill_tokens
            + self.decode_s * features.num_decodes
        )


def make(
    policy: str = "hyperflexis",
    num_blocks: int = 4096,
    block_size: int = 16,
    cost: LinearCost | None = None,
    **config: object,
) -> Scheduler:
    return make_scheduler(
        policy,
        SchedulerConfig(**config),  # type: ignore[arg-type]
        KVBlockManager(num_blocks, block_size),
        cost or LinearCost(),
    )


def request(
    request_id: str,
    prompt_len: int,
    output_len: int = 8,
    ttft_s: float = 1.0,
    tpot_s: float = 0.1,
    priority: int = 1,
    arrival_s: float = 0.0,
    late: LateAction = "serve",
) -> Request:
    return Request(
        request_id,
        [(7 * i + len(request_id)) % 1000 + 1 for i in range(prompt_len)],
        SamplingParams(max_tokens=output_len, ignore_eos=True),
        SLO(ttft_s, tpot_s, priority, f"p{priority}", late),
        arrival_s,
    )


def fake_token(request: Request) -> int:
    """A deterministic 'model': the next token is a function of the sequence so far, so a
    request recomputed after preemption must produce the same tokens."""
    return hash(tuple(request.token_ids)) % 997 + 1


def step(scheduler: Scheduler, now: float) -> tuple[float, list[Request]]:
    """Run one step at `now`; returns the time it ends and the requests that finished."""
    output = scheduler.schedule(now)
    cost = scheduler.cost_model
    assert cost is not None
    end = now + (cost.predict(output.features()) if output.chunks else 0.001)
    sampled = {
        c.request_id: fake_token(scheduler.requests[c.request_id])
        for c in output.chunks
        if c.sample
    }
    return end, scheduler.update(output, sampled, end)


def run_until_done(
    scheduler: Scheduler, pending: list[Request], now: float = 0.0, max_steps: int = 100_000
) -> list[Request]:
    """Feed `pending` by arrival time and step until everything finishes; returns finished."""
    pending = sorted(pending, key=lambda r: r.arrival_s)
    finished: list[Request] = []
    for _ in range(max_steps):
        while pending and pending[0].arrival_s <= now:
            scheduler.add_request(pending.pop(0))
        if not scheduler.has_unfinished():
            if not pending:
                return finished
            now = pending[0].arrival_s
            continue
        now, done = step(scheduler, now)
        finished.extend(done)
    raise AssertionError("requests did not finish")
