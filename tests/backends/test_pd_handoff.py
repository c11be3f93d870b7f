"""Live P/D between real instance processes, the test relaying KVReady -> ResumeRequest ->
ReleaseKV by hand: D's stream continues P's and ends exactly as a collocated run (greedy and
seeded, stop strings, max_tokens) over shm and torch-dist; a failed or timed-out pull recomputes
to the same tokens; an unconfirmed lease expires; an aborted pull frees its blocks once no late
copy can land in them. Every KV block is free on both instances at the end."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperflexis.backends.local import InstancePool
from hyperflexis.backends.messages import AbortRequest, AddRequest, ReleaseKV
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.perf.registry import make_cost_model
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.scheduler.config import Role
from hyperflexis.transfer.faulty import SLOW_READ_S
from hyperflexis.transfer.shm import SEGMENT_PREFIX, SHM_DIR
from tests.backends.pd_relay import SLO_, Relay, Relayed

PROMPT = [(11 * i + 5) % 200 + 3 for i in range(37)]
GREEDY = SamplingParams(temperature=0.0, presence_penalty=1.5, max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=12, ignore_eos=True)
LEASE_S = 3.0  # the slow pool's prefill lease: outlives a relayed hand-off, not a test's patience
_ids = (f"r{i}" for i in itertools.count())


def spec(
    instance_id: str, role: Role, model: Path, transport: str = "shm", timeout_s: float = 10.0
) -> InstanceSpec:
    lease_s = LEASE_S if transport == "faulty-slow" else 30.0
    return InstanceSpec(
        instance_id,
        str(model),
        "hyperflexis",
        SchedulerConfig(role=role, kv_lease_s=lease_s),
        cost_model=make_cost_model("fixed"),
        kv_cache_bytes=4 << 20,
        kv_transport=transport,
        kv_transfer_timeout_s=timeout_s,
    )


@pytest.fixture(scope="module")
def reference(server_model_dir: Path) -> LLMEngine:
    """A collocated instance's engine, in this process."""
    return build_engine(spec("m", "mixed", server_model_dir)).engine


def collocated(engine: LLMEngine, params: SamplingParams) -> RequestOutput:
    request_id = engine.add_request(PROMPT, params, slo=SLO_, request_id=next(_ids))
    for _ in range(1000):
        for output in engine.step():
            if output.finished:
                assert output.request_id == request_id
                return output
    raise AssertionError("the collocated run did not finish")


@pytest.fixture(scope="module", params=["shm", "torch-dist", "faulty", "faulty-slow"])
def relay(request: pytest.FixtureRequest, server_model_dir: Path) -> Iterator[Relay]:
    transport = request.param
    timeout_s = 0.3 if transport == "faulty-slow" else 10.0
    pool = InstancePool(
        [
            spec("p", "prefill", server_model_dir, transport),
            spec("d", "decode", server_model_dir, transport, timeout_s),
        ]
    )
    pool.start(timeout_s=120.0)
    try:
        for handle in pool.handles.values():
            assert handle.ready is not None and handle.ready.kv_pool is not None
            assert handle.ready.kv_pool.transport == transport
        assert [h.ready.role for h in pool.handles.values() if h.ready] == ["prefill", "decode"]
        yield Relay(pool)
    finally:
        pool.stop(timeout_s=10.0)
    pids = {h.process.pid for h in pool.handles.values()}
    left = [f for f in SHM_DIR.glob(f"{SEGMENT_PREFIX}*") if int(f.name.split("-")[2]) in pids]
    assert not left, f"KV pools left in /dev/shm: {left}"


def cases(reference: LLMEngine) -> list[SamplingParams]:
    """Greedy and seeded, each also with a stop string from the middle of its text, and cut by
    max_tokens at 2 and at 1 (the first token ends it on P: no hand-off)."""
    out = []
    for base in (GREEDY, SEEDED):
        text = collocated(reference, base).outputs[0].text
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        out += [base, dataclasses.replace(base, stop=[stop])]
        out += [dataclasses.replace(base, max_tokens=n) for n in (2, 1)]
    return out


def assert_as_collocated(relayed: Relayed, want: RequestOutput) -> None:
    completion = want.outputs[0]
    assert relayed.token_ids == completion.token_ids  # no token twice, none missing
    assert relayed.text == completion.text  # nor any text
    last = relayed.last
    assert (last.finish_reason, last.stop_reason) == (
        completion.finish_reason,
        completion.stop_reason,
    )
    assert last.num_output_tokens == len(completion.token_ids)
    assert last.ttft_s is not None and last.ttft_s > 0


def both_free(relay: Relay) -> None:
    relay.wait_until("every KV block free on P and D", lambda: all(map(relay.all_free, "pd")))


def test_pd_ends_as_collocated(relay: Relay, reference: LLMEngine) -> None:
    transport = relay.handle("p").spec.kv_transport
    for params in cases(reference):
        want = collocated(reference, params)
        relayed = relay.run(next(_ids), PROMPT, params)
        assert_as_collocated(relayed, want)
        if params.max_tokens == 1:
            assert relayed.ready is None and relayed.handoff is None
            continue
        assert relayed.ready is not None and relayed.handoff is not None
        assert relayed.num_p_deltas == 1 and relayed.deltas[0].finish_reason is None
        ready = relayed.ready
        assert ready.num_tokens == len(PROMPT) and 0 < ready.lease_s <= 30
        # The request's times are P's, carried as durations.
        assert relayed.last.ttft_s == pytest.approx(ready.ttft_s, abs=1e-6)
        assert relayed.last.queue_s == pytest.approx(ready.queue_s, abs=1e-6)
        handoff = relayed.handoff
        if transport in ("shm", "torch-dist"):
            assert handoff.ok and handoff.error is None and handoff.num_bytes > 0
        elif transport == "faulty":
            assert not handoff.ok and "injected failure" in (handoff.error or "")
        else:
            assert not handoff.ok and "TransferTimeoutError" in (handoff.error or "")
        both_free(relay)


def test_an_unconfirmed_lease_expires(relay: Relay) -> None:
    """Nobody takes the KV (no ResumeRequest, no ReleaseKV): P frees it at lease expiry."""
    if relay.handle("p").spec.kv_transport != "faulty-slow":
        pytest.skip("the slow pool has the short lease")
    request_id = next(_ids)
    start = time.monotonic()
    relay.handle("p").send(AddRequest(request_id, PROMPT, GREEDY, SLO_, start))
    relay.wait_until("KV ready", lambda: request_id in relay.kv_ready)
    assert not relay.all_free("p")
    relay.wait_until("lease expired", lambda: request_id in relay.expired.get("p", []))
    assert time.monotonic() - start >= LEASE_S * 0.9
    assert relay.all_free("p")
    relay.handle("p").send(ReleaseKV(request_id))  # a late release is harmless
    both_free(relay)


def test_an_aborted_pull_frees_its_blocks_once_no_copy_can_land(relay: Relay) -> None:
    """Abort while D's pull is in flight (the slow transport copies at once but reports done
    only later): D's blocks stay set aside until then, and nothing more is streamed."""
    if relay.handle("p").spec.kv_transport != "faulty-slow":
        pytest.skip("needs a pull still in flight")
    request_id = next(_ids)
    arrival_s = time.monotonic()
    relay.handle("p").send(AddRequest(request_id, PROMPT, GREEDY, SLO_, arrival_s))
    relay.wait_until("KV ready", lambda: request_id in relay.kv_ready)
    relayed = Relayed(list(relay.deltas[request_id]), relay.kv_ready[request_id])
    relay.handle("d").send(relay.resume("p", PROMPT, GREEDY, relayed, arrival_s))
    pulled_s = time.monotonic()
    relay.handle("d").send(AbortRequest(request_id))
    relay.handle("p").send(ReleaseKV(request_id))
    relay.wait_until("P freed the lease", lambda: relay.all_free("p"))
    relay.wait_until("D set the blocks aside", lambda: not relay.all_free("d"))
    both_free(relay)
    assert time.monotonic() - pulled_s >= SLOW_READ_S * 0.5  # not before the copy could end
    assert relay.deltas[request_id] == relayed.deltas  # D streamed nothing


def test_a_killed_instance_s_kv_pool_is_removed_by_the_pool_that_reaps_it(
    server_model_dir: Path,
) -> None:
    pool = InstancePool([spec("p", "prefill", server_model_dir)])
    pool.start(timeout_s=120.0)
    handle = pool.handles["p"]
    try:
        assert handle.ready is not None and handle.ready.kv_pool is not None
        segment = Path(handle.ready.kv_pool.handle.path)
        assert segment.exists()
        pool.kill(handle)  # SIGKILL: the process cannot unlink its own pool
        handle.process.join(10.0)
        assert segment.exists()
    finally:
        pool.stop(timeout_s=10.0)
    assert not segment.exists()
