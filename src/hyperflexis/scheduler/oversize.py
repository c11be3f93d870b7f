"""`OversizeCut`: under sustained overload, which prompts an instance sets late at once because
they are the largest (issue 18, item 12; `SchedulerConfig.oversize_load`).

A goodput target counts every request alike, so the cheapest way to keep most requests on time
is to shed the largest prompts (the fluid bound, `sim/bound.py`, drops exactly the most
expensive share). The feasibility check alone sheds only among the jobs due before a predicted
miss: a prompt that arrives with a long TTFT target is planned late in the queue, rarely looks
like the cause of a miss, and is served on time while smaller requests due sooner miss behind
the backlog it helps keep. So each instance keeps the prompt sizes that arrived over the last
`WINDOW_S` and, when they hold more prefill work than `load` x its prefill rate serves in that
time, sets the cut at the largest size the rest fits under: waiting prompts above it go to the
late set on arrival (served only with capacity no feasible request needs).
"""

from __future__ import annotations

import math
from collections import deque

# Seconds of arrivals the cut is computed over: the longest TTFT target of the default classes
# (batch, 10 s), so the cut sees the whole queue a request can wait in. Chosen on tuning seed 1.
WINDOW_S = 10.0
# An instance younger than the window measures over its life so far, but over at least this:
# a burst in its first moments is not taken for a sustained overload.
MIN_SPAN_S = 1.0
# Recompute the cut at most this often: a sort of the window's sizes.
_REFRESH_S = 0.25


class OversizeCut:
    """The prompt size above which an instance's waiting prompts are shed."""

    def __init__(self, load: float, window_s: float = WINDOW_S) -> None:
        self.load = load  # the share of the prefill rate the kept prompts may fill
        self.window_s = window_s
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival_s, prompt tokens)
        self._work_tokens = 0  # their sum
        self._first_s = math.inf  # the earliest arrival seen: the window is shorter before
        self._cut = math.inf
        self._refreshed_s = -math.inf

    def arrived(self, arrival_s: float, work_tokens: int) -> None:
        self._arrivals.append((arrival_s, work_tokens))
        self._work_tokens += work_tokens
        self._first_s = min(self._first_s, arrival_s)

    def cut_tokens(self, now: float, tokens_per_s: float) -> float:
        """Prompts larger than this are shed (inf: none is), for an instance that prefills
        `tokens_per_s` now."""
        if now - self._refreshed_s < _REFRESH_S:
            return self._cut
        self._refreshed_s = now
        arrivals, start_s = self._arrivals, now - self.window_s
        while arrivals and arrivals[0][0] < start_s:
            self._work_tokens -= arrivals.popleft()[1]
        span_s = max(min(self.window_s, now - self._first_s), MIN_SPAN_S)
        budget = self.load * tokens_per_s * span_s
        if self._work_tokens <= budget:
            self._cut = math.inf
            return self._cut
        self._cut = 0.0
        kept = 0
        for size in sorted(size for _, size in arrivals):
            kept += size
            if kept > budget:
                break
            self._cut = size
        return self._cut
