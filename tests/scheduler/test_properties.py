"""Property tests over random workloads, for every policy: a step never exceeds the token budget,
`max_num_seqs` or the KV capacity, never holds a request twice, and below capacity every request
finishes with every block freed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperflexis.core import Request
from hyperflexis.scheduler import Scheduler, policy_names
from tests.scheduler.helpers import fake_token, make, request

workloads = st.lists(
    st.tuples(
        st.integers(1, 300),  # prompt tokens
        st.integers(1, 40),  # output tokens
        st.floats(0.0, 2.0),  # arrival
        st.integers(0, 2),  # priority
        st.sampled_from([0.03, 0.1, 0.5]),  # tpot
    ),
    min_size=1,
    max_size=25,
)


def check_run(scheduler: Scheduler, reqs: list[Request]) -> None:
    pending = sorted(reqs, key=lambda r: r.arrival_s)
    budget = scheduler.config.max_num_batched_tokens
    now, finished = 0.0, 0
    for _ in range(20_000):
        while pending and pending[0].arrival_s <= now:
            scheduler.add_request(pending.pop(0))
        if not scheduler.has_unfinished() and not pending:
            break
        output = scheduler.schedule(now)
        ids = [c.request_id for c in output.chunks]
        assert len(ids) == len(set(ids)), "a request twice in one step"
        assert output.num_tokens <= budget
        assert len(ids) <= scheduler.config.max_num_seqs
        held = sum(len(scheduler.kv.block_table(o)) for o in scheduler.kv.owners())
        assert held + scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
        for chunk in output.chunks:
            req = scheduler.requests[chunk.request_id]
            assert chunk.start_pos == req.num_computed_tokens
            assert (
                len(chunk.block_ids) * scheduler.kv.block_size >= chunk.start_pos + chunk.num_tokens
            )
        now += 0.01 if output.chunks else 0.05
        sampled = {
            c.request_id: fake_token(scheduler.requests[c.request_id])
            for c in output.chunks
            if c.sample
        }
        finished += len(scheduler.update(output, sampled, now))
    assert finished == len(reqs), "every request finishes below capacity"
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads, policy=st.sampled_from(policy_names()), small_kv=st.booleans())
def test_policy_invariants(
    workload: list[tuple[int, int, float, int, float]], policy: str, small_kv: bool
) -> None:
    num_blocks = 48 if small_kv else 2048  # 48 x 8 = 384 slots: forces preemption
    scheduler = make(
        policy, num_blocks=num_blocks, block_size=8, max_num_batched_tokens=512, max_num_seqs=16
    )
    reqs = [
        request(f"r{i}", p, o, ttft_s=1.0, tpot_s=t, priority=prio, arrival_s=a)
        for i, (p, o, a, prio, t) in enumerate(workload)
    ]
    check_run(scheduler, reqs)
