"""The one resume path on the real engine (the built-in tiny model): a request continued on another
engine, by recompute or with its prompt's KV copied from a prefill engine's leased blocks, ends
exactly as an uninterrupted run: tokens, text, finish and stop reasons, output count. Greedy and
seeded sampling, stop strings and max_tokens; every KV block free afterwards."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from hyperflexis.core import SLO, SamplingParams
from hyperflexis.core.outputs import RequestOutput
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.engine.resume import Resume
from hyperflexis.perf.registry import make_cost_model
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.scheduler.config import Role

pytest.importorskip("torch")

PROMPT = [(11 * i + 5) % 200 + 3 for i in range(37)]
SLO_ = SLO(ttft_s=60.0, tpot_s=10.0, priority=1, class_name="test")
# Penalties keep the tiny model's greedy text from repeating one token (and read the context).
GREEDY = SamplingParams(temperature=0.0, presence_penalty=1.5, max_tokens=14, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=14, ignore_eos=True)
_ids = iter(range(1_000_000))


def build(role: Role, policy: str = "hyperflexis") -> LLMEngine:
    spec = InstanceSpec(
        f"{role}-{policy}",
        None,
        policy,
        SchedulerConfig(role=role),
        cost_model=make_cost_model("fixed"),
        kv_cache_bytes=8 << 20,
        seed=123 if role == "decode" else 0,  # unseeded draws must not matter to seeded ones
    )
    return build_engine(spec).engine


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[Role, LLMEngine]]:
    roles: tuple[Role, ...] = ("mixed", "prefill", "decode")
    built = {role: build(role) for role in roles}
    yield built
    for engine in built.values():
        kv = engine.scheduler.kv
        assert kv.num_free_blocks == kv.num_blocks, "KV blocks left in use"


def new_id() -> str:
    return f"r{next(_ids)}"


def run(engine: LLMEngine, request_id: str) -> RequestOutput:
    """Step until `request_id` finishes; its final output."""
    for _ in range(10_000):
        for output in engine.step():
            if output.request_id == request_id and output.finished:
                return output
    raise AssertionError(f"{request_id} did not finish")


def collocated(engine: LLMEngine, params: SamplingParams) -> RequestOutput:
    request_id = engine.add_request(PROMPT, params, slo=SLO_, request_id=new_id())
    return run(engine, request_id)


def assert_same_end(got: RequestOutput, want: RequestOutput) -> None:
    g, w = got.outputs[0], want.outputs[0]
    assert (g.token_ids, g.text, g.finish_reason, g.stop_reason) == (
        w.token_ids,
        w.text,
        w.finish_reason,
        w.stop_reason,
    )
    assert got.metrics.num_output_tokens == len(w.token_ids)


def hand_off(engines: dict[Role, LLMEngine], params: SamplingParams, how: str) -> RequestOutput:
    """P prefills; D continues with P's KV copied block by block ("kv"), with a copy that fails
    ("failed"), or by recompute ("recompute"). Returns D's final output (P's when the first
    token ended the request)."""
    prefill, decode = engines["prefill"], engines["decode"]
    request_id = prefill.add_request(PROMPT, params, slo=SLO_, request_id=new_id())
    first = run(prefill, request_id)
    if first.outputs[0].finish_reason != "prefilled":
        assert not prefill.scheduler.leases.take_new()
        return first
    [lease] = prefill.scheduler.leases.take_new()
    assert first.outputs[0].token_ids and len(first.outputs[0].token_ids) == 1
    resume = Resume(
        request_id,
        PROMPT,
        first.outputs[0].token_ids,
        params,
        SLO_,
        age_s=0.5,
        ttft_s=0.2,
        kv_tokens=0 if how == "recompute" else lease.num_tokens,
    )
    blocks = decode.resume(resume)
    assert len(blocks) == (0 if how == "recompute" else len(lease.block_ids))
    if how in ("kv", "zeros"):
        source, dest = prefill.runner.kv_cache, decode.runner.kv_cache  # type: ignore[attr-defined]
        pairs = (
            *zip(source.key_caches, dest.key_caches, strict=True),
            *zip(source.value_caches, dest.value_caches, strict=True),
        )
        for theirs, mine in pairs:
            mine[blocks] = 0.0 if how == "zeros" else theirs[list(lease.block_ids)]
        assert decode.kv_arrived(request_id)
    elif how == "failed":
        assert decode.kv_failed(request_id)
    assert prefill.release_lease(request_id)
    outputs = decode.step()
    # Decoded on P's KV: D's first step computes only the new token (a recompute, the rest too).
    assert decode.last_step.num_tokens == (1 if how in ("kv", "zeros") else len(PROMPT) + 1)
    finished = [o for o in outputs if o.request_id == request_id and o.finished]
    done = finished[0] if finished else run(decode, request_id)
    text = done.outputs[0].text
    assert text.startswith(first.outputs[0].text) or done.outputs[0].finish_reason == "stop"
    assert done.metrics.first_token_s is not None and done.metrics.first_token_s < decode.clock()
    return done


def with_stop_string(engines: dict[Role, LLMEngine], params: SamplingParams) -> SamplingParams:
    """`params` with a stop string taken from the middle of its uninterrupted text."""
    text = collocated(engines["mixed"], params).outputs[0].text
    assert len(text) > 12
    return dataclasses.replace(params, stop=[text[len(text) // 2 : len(text) // 2 + 3]])


@pytest.mark.parametrize("how", ["kv", "recompute", "failed"])
@pytest.mark.parametrize("sampling", ["greedy", "seeded"])
def test_a_handed_off_request_ends_as_an_uninterrupted_one(
    engines: dict[Role, LLMEngine], how: str, sampling: str
) -> None:
    base = GREEDY if sampling == "greedy" else SEEDED
    for params in (
        base,
        with_stop_string(engines, base),
        dataclasses.replace(base, max_tokens=2),
        dataclasses.replace(base, max_tokens=1),  # the first token ends it on P: no lease
    ):
        want = collocated(engines["mixed"], params)
        assert_same_end(hand_off(engines, params, how), want)


@pytest.mark.parametrize("sampling", ["greedy", "seeded"])
@pytest.mark.parametrize("moved_at", [1, 5])
def test_a_request_resumed_part_way_by_recompute_ends_as_an_uninterrupted_one(
    engines: dict[Role, LLMEngine], sampling: str, moved_at: int
) -> None:
    """Migration or recovery: k tokens out on one engine, the rest recomputed on another."""
    params = with_stop_string(engines, GREEDY if sampling == "greedy" else SEEDED)
    want = collocated(engines["mixed"], params)
    source, target = engines["mixed"], engines["decode"]
    request_id = source.add_request(PROMPT, params, slo=SLO_, request_id=new_id())
    for _ in range(100):
        outputs = [o for o in source.step() if o.request_id == request_id]
        if outputs and len(outputs[0].outputs[0].token_ids) >= moved_at:
            break
    assert not outputs[0].finished
    partial = source.abort(request_id)
    assert partial is not None
    tokens = partial.outputs[0].token_ids
    assert len(tokens) == moved_at
    resume = Resume(request_id, PROMPT, tokens, params, SLO_, age_s=1.0, ttft_s=0.3)
    assert target.resume(resume) == []
    done = run(target, request_id)
    assert_same_end(done, want)
    assert done.metrics.arrival_s == pytest.approx(done.metrics.first_token_s - 0.3)  # type: ignore[operator]


def test_resume_refuses_what_cannot_continue(engines: dict[Role, LLMEngine]) -> None:
    decode = engines["decode"]
    bad = [
        (Resume("x", PROMPT, [5], GREEDY, SLO_, age_s=1.0), "ttft_s"),
        (Resume("x", PROMPT, [5], GREEDY, SLO_, age_s=1.0, ttft_s=2.0), "outside"),
        (Resume("x", PROMPT, [5] * 14, GREEDY, SLO_, age_s=1.0, ttft_s=0.1), "max_tokens"),
        (Resume("x", PROMPT, [10**6], GREEDY, SLO_, age_s=1.0, ttft_s=0.1), "output_token_ids"),
        (Resume("x", PROMPT, [5], GREEDY, SLO_, age_s=1, ttft_s=0.1, kv_tokens=38), "hand-off"),
    ]
    for resume, message in bad:
        with pytest.raises(ValueError, match=message):
            decode.resume(resume)
    assert not decode.has_unfinished()


def test_the_copied_kv_is_what_the_decode_reads(engines: dict[Role, LLMEngine]) -> None:
    """The check above has teeth: the same hand-off over zeroed blocks decodes otherwise."""
    want = collocated(engines["mixed"], GREEDY)
    assert hand_off(engines, GREEDY, "zeros").outputs[0].token_ids != want.outputs[0].token_ids


@pytest.mark.parametrize("moved_at", [1, 6])
def test_a_request_migrated_part_way_with_its_kv_ends_as_an_uninterrupted_one(
    engines: dict[Role, LLMEngine], moved_at: int
) -> None:
    """A drain's migration: stopped between steps on a collocated engine, its KV (prompt and
    output so far, all but the newest token) leased and copied, decoded on."""
    params = with_stop_string(engines, GREEDY)
    want = collocated(engines["mixed"], params)
    source, target = engines["mixed"], engines["decode"]
    request_id = source.add_request(PROMPT, params, slo=SLO_, request_id=new_id())
    while len(source.step()[0].outputs[0].token_ids) < moved_at:
        pass
    assert source.migrate_out("unknown") is None
    moved = source.migrate_out(request_id)
    assert moved is not None and not source.has_unfinished()
    lease, partial = moved
    tokens = partial.outputs[0].token_ids
    assert lease is not None and len(tokens) == moved_at
    assert lease.num_tokens == len(PROMPT) + moved_at - 1
    resume = Resume(
        request_id, PROMPT, tokens, params, SLO_, age_s=1.0, ttft_s=0.3, kv_tokens=lease.num_tokens
    )
    blocks = target.resume(resume)
    mine, theirs = target.runner.kv_cache, source.runner.kv_cache  # type: ignore[attr-defined]
    for dest, src in (
        *zip(mine.key_caches, theirs.key_caches, strict=True),
        *zip(mine.value_caches, theirs.value_caches, strict=True),
    ):
        dest[blocks] = src[list(lease.block_ids[: len(blocks)])]
    assert target.kv_arrived(request_id)
    assert source.release_lease(request_id)
    outputs = target.step()
    assert target.last_step.num_tokens == 1  # decoded on the copied KV: only the newest token
    finished = [o for o in outputs if o.request_id == request_id and o.finished]
    assert_same_end(finished[0] if finished else run(target, request_id), want)
