"""The baseline policies make the decisions their namesakes make."""

from __future__ import annotations

import pytest

from hyperflexis.core import FinishReason
from hyperflexis.scheduler import SchedulerConfig, policy_class, policy_names
from tests.scheduler.helpers import make, request, run_until_done, step


def test_registry_lists_every_policy_and_rejects_unknown() -> None:
    assert set(policy_names()) >= {"fcfs", "priority", "edf", "sarathi", "distserve", "hyperflexis"}
    with pytest.raises(ValueError, match="known: distserve, edf, edf-drop, fcfs"):
        policy_class("lifo")


def test_fcfs_chunks_the_head_and_never_lets_later_requests_overtake() -> None:
    scheduler = make("fcfs", max_num_batched_tokens=100)
    scheduler.add_request(request("a", 250))
    scheduler.add_request(request("b", 10))
    output = scheduler.schedule(0.0)
    assert [(c.request_id, c.num_tokens) for c in output.chunks] == [("a", 100)]


def test_fcfs_running_first_then_waiting() -> None:
    scheduler = make("fcfs", max_num_batched_tokens=64)
    scheduler.add_request(request("a", 40, output_len=5))
    step(scheduler, 0.0)
    scheduler.add_request(request("b", 100))
    output = scheduler.schedule(0.1)
    assert [(c.request_id, c.num_tokens) for c in output.chunks] == [("a", 1), ("b", 63)]


def test_fcfs_preempts_latest_admitted_on_kv_shortage() -> None:
    scheduler = make("fcfs", num_blocks=10, block_size=4, max_num_batched_tokens=64)
    scheduler.add_request(request("a", 8, output_len=20))
    scheduler.add_request(request("b", 8, output_len=20))
    now = 0.0
    while not scheduler.num_preemptions:
        now, _ = step(scheduler, now)
    assert scheduler.requests["b"].num_preemptions == 1
    finished = run_until_done(scheduler, [], now)
    assert {r.finish_reason for r in finished} == {FinishReason.LENGTH}


def test_priority_orders_waiting_by_priority() -> None:
    scheduler = make("priority", max_num_batched_tokens=50)
    scheduler.add_request(request("low", 40, priority=2))
    scheduler.add_request(request("high", 40, priority=0, arrival_s=1.0))
    output = scheduler.schedule(1.0)
    assert output.chunks[0].request_id == "high"


def test_edf_orders_waiting_by_deadline() -> None:
    scheduler = make("edf", max_num_batched_tokens=50)
    scheduler.add_request(request("loose", 40, ttft_s=10.0))
    scheduler.add_request(request("tight", 40, ttft_s=0.5, arrival_s=0.1))
    assert scheduler.schedule(0.1).chunks[0].request_id == "tight"


def test_sarathi_runs_decodes_first_under_a_fixed_chunk() -> None:
    scheduler = make("sarathi", max_num_batched_tokens=4096, max_prefill_chunk=128)
    scheduler.add_request(request("d", 10, output_len=20))
    scheduler.add_request(request("long", 1000))
    now, _ = step(scheduler, 0.0)  # d's prompt and the first 118 tokens of long
    output = scheduler.schedule(now)
    assert [(c.request_id, c.num_tokens) for c in output.chunks] == [("d", 1), ("long", 127)]


def test_distserve_runs_whole_prompts() -> None:
    scheduler = make("distserve", max_num_batched_tokens=1000)
    scheduler.add_request(request("a", 600))
    scheduler.add_request(request("b", 600))
    output = scheduler.schedule(0.0)
    assert [(c.request_id, c.num_tokens) for c in output.chunks] == [("a", 600)]
    with pytest.raises(ValueError, match="chunked prefill is off"):
        scheduler.add_request(request("c", 1500))


@pytest.mark.parametrize("budget", [256, 512, 1024])
def test_sarathi_chunk_follows_the_token_budget(budget: int) -> None:
    scheduler = make("sarathi", max_num_batched_tokens=budget)
    scheduler.add_request(request("d", 10, output_len=20))
    scheduler.add_request(request("long", 5000))
    now, _ = step(scheduler, 0.0)  # d's prompt, then long's first chunk fills the budget
    output = scheduler.schedule(now)
    assert [(c.request_id, c.num_tokens) for c in output.chunks] == [("d", 1), ("long", budget - 1)]
    assert scheduler.max_decodes_per_step() == budget


@pytest.mark.parametrize(("budget", "batched"), [(1300, ["a", "b"]), (2000, ["a", "b", "c"])])
def test_distserve_batches_whole_prompts_up_to_the_token_budget(
    budget: int, batched: list[str]
) -> None:
    scheduler = make("distserve", max_num_batched_tokens=budget)
    for name in ("a", "b", "c"):
        scheduler.add_request(request(name, 600))
    output = scheduler.schedule(0.0)
    assert [(c.request_id, c.num_tokens) for c in output.chunks] == [(n, 600) for n in batched]


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="role"):
        SchedulerConfig(role="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)


def test_abort_frees_blocks_and_duplicate_ids_fail() -> None:
    scheduler = make("fcfs")
    scheduler.add_request(request("a", 100))
    step(scheduler, 0.0)
    assert scheduler.kv.num_free_blocks < scheduler.kv.num_blocks
    with pytest.raises(ValueError, match="duplicate"):
        scheduler.add_request(request("a", 5))
    aborted = scheduler.abort_request("a", 1.0)
    assert aborted is not None and aborted.finish_reason is FinishReason.ABORTED
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
    assert not scheduler.has_unfinished()
    assert scheduler.abort_request("a", 1.0) is None


def test_prompt_larger_than_the_cache_is_refused() -> None:
    scheduler = make("fcfs", num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="KV blocks"):
        scheduler.add_request(request("big", 40))
    with pytest.raises(ValueError, match="at least one token"):
        scheduler.add_request(request("empty", 0))


def test_preempted_request_recomputes_in_chunks_without_chunked_prefill() -> None:
    scheduler = make("distserve", num_blocks=64, block_size=4, max_num_batched_tokens=40)
    req = request("a", 30, output_len=40)
    scheduler.add_request(req)
    now = 0.0
    while req.num_tokens <= 40:
        now, _ = step(scheduler, now)
    scheduler._preempt(req, scheduler.schedule(now))  # as a KV shortage would
    finished = run_until_done(scheduler, [], now)
    assert [r.request_id for r in finished] == ["a"] and req.num_output_tokens == 40
