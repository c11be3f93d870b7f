"""The waiting index (scheduler/waiting.py) mirrors the waiting queue, and setting hopeless
requests aside changes no decision of `hyperflexis`: under a sustained overload, with
preemptions, ties and admission control, it decides exactly as the plain check over the whole
queue, step by step, and the snapshot's summary matches its pending prefills."""

from __future__ import annotations

import random

import pytest

from hyperflexis.cluster.snapshot import take_snapshot
from hyperflexis.core import Request
from hyperflexis.scheduler import Scheduler
from hyperflexis.scheduler.kv_blocks import num_blocks_for
from hyperflexis.scheduler.policies.hyperflexis import HyperFlexisScheduler
from tests.scheduler.helpers import fake_token, make, request


def _plain(scheduler: Scheduler) -> None:
    """Make `scheduler` re-check every waiting request each step (the code before the index)."""
    assert isinstance(scheduler, HyperFlexisScheduler)
    scheduler._sets_aside_hopeless = False  # type: ignore[misc]


def _arrivals(seed: int, count: int) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        priority = rng.choice([0, 1, 2])
        # Whole-millisecond arrivals and few SLO values: equal deadlines happen.
        out.append(
            request(
                f"r{i:04d}",
                rng.choice([16, 64, 300, 900]),
                output_len=rng.randint(1, 12),
                ttft_s=[0.2, 0.5, 1.0][priority],
                tpot_s=[0.05, 0.1, 0.2][priority],
                priority=priority,
                arrival_s=round(i * 0.004, 3),
                late=rng.choice(["serve", "reject"]),
            )
        )
    return out


def _check_snapshot(scheduler: Scheduler, now: float) -> None:
    snapshot = take_snapshot("i", scheduler, now)
    index = scheduler.waiting_index
    waiting = [(r.next_token_deadline_s, r.num_uncomputed_tokens) for r in scheduler.waiting]
    listed = [(p.deadline_s, p.work_tokens) for p in snapshot.pending_prefills]
    assert listed[len(listed) - len(waiting) :] == waiting  # waiting order kept
    summary = snapshot.pending_summary
    assert summary is not None
    assert summary.work_tokens == sum(p.work_tokens for p in snapshot.pending_prefills)
    blocks = sum(num_blocks_for(p.work_tokens, 16) for p in snapshot.pending_prefills)
    assert summary.num_blocks == blocks
    skipped = [p for p in snapshot.pending_prefills if p not in summary.checked]
    assert all(p.deadline_s < index.now <= now for p in skipped)


@pytest.mark.parametrize(("seed", "admission_control"), [(1, False), (2, True), (3, False)])
def test_setting_hopeless_aside_decides_as_the_whole_check(
    seed: int, admission_control: bool
) -> None:
    # A small KV cache forces preemptions (requests back at the front of the queue).
    fast = make(num_blocks=160, max_num_batched_tokens=512, admission_control=admission_control)
    plain = make(num_blocks=160, max_num_batched_tokens=512, admission_control=admission_control)
    _plain(plain)
    pending = {s: _arrivals(seed, 600) for s in ("fast", "plain")}
    now, num_hopeless_seen, num_preemptions = 0.0, 0, 0
    while pending["fast"] or fast.has_unfinished():
        outputs = []
        for name, scheduler in (("fast", fast), ("plain", plain)):
            queue = pending[name]
            while queue and queue[0].arrival_s <= now:
                scheduler.add_request(queue.pop(0))
            outputs.append(scheduler.schedule(now))
        assert outputs[0] == outputs[1]
        num_hopeless_seen = max(num_hopeless_seen, len(fast.waiting_index.hopeless()))
        num_preemptions += len(outputs[0].preempted_ids)
        cost = fast.cost_model
        assert cost is not None
        end = now + (cost.predict(outputs[0].features()) if outputs[0].chunks else 0.002)
        finished = []
        for scheduler, output in zip((fast, plain), outputs, strict=True):
            sampled = {
                c.request_id: fake_token(scheduler.requests[c.request_id])
                for c in output.chunks
                if c.sample
            }
            finished.append([r.request_id for r in scheduler.update(output, sampled, end)])
        assert finished[0] == finished[1]
        _check_snapshot(fast, end)
        now = end
    assert not plain.has_unfinished()
    assert num_hopeless_seen > 50 and num_preemptions > 0  # the case the index is for
    assert fast.kv.num_free_blocks == fast.kv.num_blocks
    assert fast.waiting_index.work_tokens == 0 and not fast.waiting_index.pending()
