"""Fast-forward: many decode-only steps of one instance at once, with the same outcome as
stepping them one by one.

While an instance runs only decodes (nothing waiting, nothing part-way through a prompt) and no
request finishes, every step is "each running request decodes one token": its time follows from
the batch's context, which grows by one token per request per step, so the step end times can be
summed in a loop of float arithmetic without asking the scheduler. The window stops before the
step in which the first request would finish (that step runs normally), and before any step in
which the policy would act differently: KV blocks run short (it would preempt), or the batch
outgrows what the policy itself says it runs as is (its `max_decodes_per_step` and
`max_decode_only_step_s`: a fixed token budget; for `hyperflexis`, the TPOT gap bound).

The window is lazy: `DecodeWindow.apply(t)` writes the tokens of the steps that ended by `t`
into the requests, and allocates the KV blocks of the step in flight at `t`, exactly the state
the scheduler would hold mid-step at `t` had it stepped one by one. The simulator applies it
before anyone reads the instance (a dispatcher snapshot) and cuts it short after the step in
flight when a new request reaches the instance.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

from hyperflexis.core.request import Request
from hyperflexis.core.slo import token_lateness_s
from hyperflexis.perf.base import StepCostModel, StepFeatures
from hyperflexis.scheduler.base import Scheduler

DUMMY_TOKEN_ID = 0  # what simulated steps "sample"; requests run with ignore_eos

# One step as the parity test compares them: its start time and (request_id, start_pos,
# num_tokens) of each chunk, in batch order.
StepRecord = tuple[float, list[tuple[str, int, int]]]


@dataclass(slots=True)
class DecodeWindow:
    """Decode-only steps planned from `start_s`; `ends_s[m]` is when step m+1 ends."""

    requests: list[Request]  # the running requests, in the scheduler's batch order
    start_ctx: list[int]  # each one's computed tokens when the window began
    start_s: float  # when the window began
    ends_s: list[float]  # end time of every planned step, increasing
    num_applied: int = 0  # steps whose tokens are written into the requests
    # (start_s, [(request_id, start_pos, num_tokens)]) of each applied step, when recording.
    step_log: list[StepRecord] | None = None

    @property
    def end_s(self) -> float:
        return self.ends_s[-1]

    @property
    def num_steps(self) -> int:
        return len(self.ends_s)

    def steps_done_by(self, now: float) -> int:
        """Planned steps that have ended by `now`."""
        return bisect.bisect_right(self.ends_s, now)

    def apply(self, scheduler: Scheduler, now: float) -> bool:
        """Bring the requests and the KV cache to their state at `now`; True when a step ended
        since the last call (the state changed)."""
        done = self.steps_done_by(now)
        kv = scheduler.kv
        changed = done > self.num_applied
        if changed:
            first = self.num_applied
            new = done - first
            ends = self.ends_s
            last_s = ends[done - 1]
            if self.step_log is not None:
                self._log(first, done)
            inner_gap_s = max((ends[j] - ends[j - 1] for j in range(first + 1, done)), default=0.0)
            latest: dict[float, int] = {}  # tpot -> the step whose token is latest
            for request, ctx in zip(self.requests, self.start_ctx, strict=True):
                slo = request.slo
                tpot = slo.tpot_s
                worst = latest.get(tpot)
                if worst is None:
                    # Step j emits output token (num_output_tokens + j - first); the one latest
                    # against its deadline maximises end - j * tpot, whatever the request.
                    steps = range(first, done)
                    worst = latest[tpot] = max(steps, key=lambda j: ends[j] - j * tpot)
                index = request.num_output_tokens + worst - first
                lateness_s = token_lateness_s(
                    ends[worst], index, request.arrival_s, slo.ttft_s, tpot
                )
                assert request.last_token_s is not None  # decoding
                gap_s = max(ends[first] - request.last_token_s, inner_gap_s)
                request.append_tokens(DUMMY_TOKEN_ID, new, last_s, (gap_s, lateness_s))
                request.num_computed_tokens += new
                kv.allocate(request.request_id, ctx + done)
            self.num_applied = done
        if done < len(self.ends_s):
            # The step in flight has its blocks, as `schedule` would have allocated them.
            for request, ctx in zip(self.requests, self.start_ctx, strict=True):
                kv.allocate(request.request_id, ctx + done + 1)
        return changed

    def cut_after_step_in_flight(self, now: float) -> bool:
        """Drop the planned steps after the one in flight at `now` (call `apply(now)` first);
        True when that shortened the window."""
        keep = self.steps_done_by(now) + 1
        if keep >= len(self.ends_s):
            return False
        del self.ends_s[keep:]
        return True

    def _log(self, first: int, stop: int) -> None:
        assert self.step_log is not None
        for m in range(first, stop):
            start_s = self.ends_s[m - 1] if m > 0 else self.start_s
            pairs = zip(self.requests, self.start_ctx, strict=True)
            self.step_log.append((start_s, [(r.request_id, ctx + m, 1) for r, ctx in pairs]))


def plan_window(
    scheduler: Scheduler,
    cost_model: StepCostModel,
    now: float,
    max_steps: int | None = None,
    charge: Callable[[int, StepFeatures, float], float] | None = None,
) -> DecodeWindow | None:
    """The decode-only steps `scheduler` would run from `now` until the first request finishes
    or the policy would do something else; None when that is no step at all. `charge(m, f, s)`
    is the time the window's step m (features f) takes when predicted `s` (step noise); None:
    `s`. Where the window stops is decided on predictions, as the policy decides."""
    if scheduler.waiting or not scheduler.running:
        return None
    requests = list(scheduler.running)
    block_size = scheduler.kv.block_size
    # Per block-phase, how many requests open a new block at that step (step m uses phase
    # (m-1) % block_size): a request at context c opens one when c % block_size == 0.
    opens = [0] * block_size
    ctx_total = 0
    steps_left = math.inf
    tightest_tpot_s = math.inf
    for request in requests:
        if not request.is_decoding:
            return None  # still computing its prompt
        params = request.sampling_params
        if params.stop_token_ids or not (params.ignore_eos or request.eos_token_id is None):
            return None  # its next token could stop it, which only a real sample can tell
        ctx = request.num_computed_tokens
        ctx_total += ctx
        opens[-ctx % block_size] += 1
        steps_left = min(steps_left, params.max_tokens - request.num_output_tokens)
        tightest_tpot_s = min(tightest_tpot_s, request.slo.tpot_s)
    num_decodes = len(requests)
    if num_decodes > scheduler.max_decodes_per_step():
        return None
    step_cap_s = scheduler.max_decode_only_step_s(num_decodes, tightest_tpot_s)
    # The step that emits a request's last token finishes it; that one runs for real.
    num_steps = int(steps_left) - 1
    if max_steps is not None:
        num_steps = min(num_steps, max_steps)
    free = scheduler.kv.num_free_blocks
    features = StepFeatures(num_decodes=num_decodes)
    predict = cost_model.predict
    ends: list[float] = []
    end_s = now
    for m in range(num_steps):
        need = opens[m % block_size]
        if need > free:
            break  # the policy would preempt
        features.decode_ctx_tokens = ctx_total + m * num_decodes
        step_s = predict(features)
        if step_s > step_cap_s:
            break  # the policy would preempt (hyperflexis: to keep the TPOT gap bound)
        free -= need
        end_s = end_s + (step_s if charge is None else charge(m, features, step_s))
        ends.append(end_s)
    if not ends:
        return None
    return DecodeWindow(requests, [r.num_computed_tokens for r in requests], now, ends)
