"""The scheduler's half of the P/D hand-off: a prefill instance's leased blocks (released, expired,
aborted) and a decode instance's requests waiting for their KV (arrived, failed, aborted)."""

from __future__ import annotations

import pytest

from hyperflexis.core.request import FinishReason, Request, RequestStatus
from hyperflexis.scheduler import Scheduler
from tests.scheduler.helpers import fake_token, make, request, run_until_done, step


def all_free(scheduler: Scheduler) -> bool:
    return scheduler.kv.num_free_blocks == scheduler.kv.num_blocks


def prefilled(policy: str = "hyperflexis", lease_s: float = 30.0) -> tuple[Scheduler, Request]:
    scheduler = make(policy, role="prefill", kv_lease_s=lease_s)
    req = request("p", 40, output_len=10)
    assert [r.finish_reason for r in run_until_done(scheduler, [req])] == [FinishReason.PREFILLED]
    return scheduler, req


@pytest.mark.parametrize("policy", ["hyperflexis", "fcfs", "distserve"])
def test_a_prefilled_prompt_keeps_its_blocks_until_released(policy: str) -> None:
    scheduler, req = prefilled(policy)
    [lease] = scheduler.leases.take_new()
    assert (lease.request_id, lease.num_tokens, len(lease.block_ids)) == ("p", 40, 3)
    assert lease.expires_s == pytest.approx(req.finish_s + 30.0)
    assert scheduler.leases.take_new() == []  # reported once
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks - 3
    assert not scheduler.has_unfinished()  # the lease is not work to step
    assert scheduler.release_lease("p")
    assert not scheduler.release_lease("p")
    assert all_free(scheduler)


def test_a_lease_expires_at_its_time_and_is_reported_once() -> None:
    scheduler, req = prefilled(lease_s=2.0)
    assert req.finish_s is not None
    expiry = req.finish_s + 2.0
    assert scheduler.leases.next_expiry_s == pytest.approx(expiry)
    assert scheduler.expire_leases(expiry - 1e-6) == []
    assert not all_free(scheduler)
    assert scheduler.expire_leases(expiry) == ["p"]
    assert all_free(scheduler)
    assert scheduler.expire_leases(expiry + 10) == []
    assert not scheduler.release_lease("p")  # a late release is harmless


def test_aborting_a_prefilled_request_frees_its_lease() -> None:
    scheduler, _ = prefilled()
    assert scheduler.abort_request("p", 5.0) is None  # no longer a request here
    assert all_free(scheduler)


def test_the_same_id_may_run_again_while_its_lease_is_held() -> None:
    scheduler, _ = prefilled()
    scheduler.leases.take_new()
    again = request("p", 20, output_len=10)
    run_until_done(scheduler, [again], now=10.0)
    [lease] = scheduler.leases.take_new()  # the newer prefill's lease replaces the first
    assert (len(scheduler.leases), lease.num_tokens) == (1, 20)
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks - 2
    assert scheduler.release_lease("p")
    assert all_free(scheduler)


def test_a_prompt_that_ends_at_its_first_token_is_freed_without_a_lease() -> None:
    scheduler = make(role="prefill")
    req = request("p", 40, output_len=1)
    assert [r.finish_reason for r in run_until_done(scheduler, [req])] == [FinishReason.LENGTH]
    assert scheduler.leases.take_new() == []
    assert all_free(scheduler)


def handed_off(prompt_len: int = 40, output_len: int = 6) -> Request:
    """A request as a prefill instance leaves it: prompt computed, its first token out."""
    req = request("d", prompt_len, output_len=output_len, ttft_s=1.0, tpot_s=0.1)
    req.append_token(5, 0.2)
    return req


def test_a_receiving_request_holds_blocks_and_waits_for_its_kv() -> None:
    scheduler = make(role="decode")
    req = handed_off()
    blocks = scheduler.add_receiving(req, 40)
    assert len(blocks) == 3 and scheduler.kv.num_free_blocks == scheduler.kv.num_blocks - 3
    assert req.status is RequestStatus.RECEIVING and scheduler.has_unfinished()
    for now in (0.3, 0.4):
        assert step(scheduler, now)[1] == [] and scheduler.schedule(now).chunks == []
    assert scheduler.kv_arrived("d") and not scheduler.kv_arrived("d")
    output = scheduler.schedule(0.5)
    assert [(c.request_id, c.start_pos, c.num_tokens) for c in output.chunks] == [("d", 40, 1)]
    assert output.chunks[0].block_ids[:3] == blocks
    scheduler.update(output, {"d": fake_token(req)}, 0.6)
    [done] = run_until_done(scheduler, [], now=0.6)
    assert done.num_output_tokens == 6 and done.first_token_s == 0.2  # deadlines unchanged
    assert all_free(scheduler)


def test_a_failed_copy_recomputes_prompt_and_output_with_the_same_tokens() -> None:
    reference = make(role="decode")
    ref = handed_off()
    ref.num_computed_tokens = 40
    reference.add_request(ref)
    [want] = run_until_done(reference, [])

    scheduler = make(role="decode")
    req = handed_off()
    scheduler.add_receiving(req, 40)
    assert scheduler.kv_failed("d") and not scheduler.kv_failed("d")
    assert all_free(scheduler)
    output = scheduler.schedule(0.5)
    assert [(c.start_pos, c.num_tokens) for c in output.chunks] == [(0, 41)]
    scheduler.update(output, {"d": fake_token(req)}, 0.6)
    [done] = run_until_done(scheduler, [], now=0.6)
    assert done.output_token_ids == want.output_token_ids
    assert done.first_token_s == 0.2 and done.next_token_deadline_s == want.next_token_deadline_s
    assert all_free(scheduler)


def test_aborting_a_receiving_request_frees_its_blocks() -> None:
    scheduler = make(role="decode")
    scheduler.add_receiving(handed_off(), 40)
    assert scheduler.abort_request("d", 0.5) is not None
    assert not scheduler.kv_arrived("d") and not scheduler.has_unfinished()
    assert all_free(scheduler)


def test_receiving_refuses_what_cannot_be_held() -> None:
    scheduler = make(role="decode", num_blocks=8, block_size=16)
    with pytest.raises(ValueError, match="invalid KV hand-off"):
        scheduler.add_receiving(handed_off(), 41)  # the new token's KV cannot come from P
    with pytest.raises(ValueError, match="needs 9 KV blocks"):
        scheduler.add_receiving(handed_off(100, 40), 100)
    scheduler.add_receiving(handed_off(100, 20), 100)
    other = request("e", 20, output_len=5)
    other.append_token(5, 0.2)
    with pytest.raises(ValueError, match="no room for the KV"):
        scheduler.add_receiving(other, 20)
    assert "e" not in scheduler.requests
