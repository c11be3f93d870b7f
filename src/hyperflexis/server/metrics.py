"""Server metrics through `prometheus_client`, in one `CollectorRegistry` per server (several
servers may share a process, as the tests do).

Two families (`metric_families`; docs/metrics.md lists every series). vLLM's names, meanings
and labels for what both systems measure, so that a vLLM dashboard or alert works unchanged:
every series carries `model_name` and, where it belongs to one instance, `engine` (the instance
id; Prometheus keeps `instance` for the scrape target). HyperFlexis's own `hyperflexis:` series
cover what only a multi-SLO server has: attainment per SLO class, misses by cause, rejections by
where, the server's own overhead, the latency model's correction.

As in vLLM, TTFT and E2E are measured by the server from arrival to receipt; queue, prefill,
decode and inter-token times are the instance's durations, carried by `OutputDelta`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from hyperflexis.backends.local import InstanceHandle
from hyperflexis.backends.messages import OutputDelta
from hyperflexis.core.slo import SLO
from hyperflexis.server.metric_families import ClassSeries, EngineSeries, Families
from hyperflexis.server.pool_cost import ROLES, PoolCost

NUM_RECENT_OVERHEADS = 10_000  # samples kept for exact quantiles in /debug/stats


class ServerMetrics:
    """Everything /metrics shows. The serving core records request events and instance reports
    into it; `render` writes the exposition."""

    def __init__(
        self,
        model_name: str,
        slo_classes: Iterable[str] = (),
        max_model_len: int = 4096,
        price_per_hour: float = 0.0,
    ) -> None:
        self.model_name = model_name
        self.pool_cost = PoolCost(price_per_hour)
        self.registry = CollectorRegistry()
        self.families = Families(self.registry, model_name, max_model_len)
        # Every known instance's and class's series exist from the start, at zero, so that
        # dashboards and rates see them before the first event.
        self._engines: dict[str, EngineSeries] = {}
        self._classes = {name: self.families.slo_class(name) for name in slo_classes}
        self._num_preemptions: dict[str, int] = {}  # the latest total each instance reported
        self.recent_overheads_s: deque[float] = deque(maxlen=NUM_RECENT_OVERHEADS)

    def _engine(self, engine: str) -> EngineSeries:
        series = self._engines.get(engine)
        if series is None:
            series = self._engines[engine] = self.families.engine(engine)
        return series

    def _class(self, name: str) -> ClassSeries:
        series = self._classes.get(name)
        if series is None:
            series = self._classes[name] = self.families.slo_class(name)
        return series

    # -- request events ---------------------------------------------------------------------

    def on_rejected(self, slo_class: str, where: str) -> None:
        """Turned away with a 503 (`where`: dispatch, instance or queue)."""
        series = self._class(slo_class)
        series.rejected[where].inc()
        series.missed["rejected"].inc()

    def on_first_token(
        self, engine: str, slo_class: str, ttft_s: float, num_prompt_tokens: int
    ) -> None:
        series = self._engine(engine)
        series.histograms["ttft"].observe(ttft_s)
        series.counters["prompt_tokens"].inc(num_prompt_tokens)
        self._class(slo_class).ttft.observe(ttft_s)

    def on_tokens(self, engine: str, num_tokens: int, gap_s: float | None) -> None:
        """`num_tokens` new output tokens, `gap_s` after the request's previous token (None for
        the first): each token is one inter-token observation of gap/num_tokens."""
        series = self._engine(engine)
        series.counters["generation_tokens"].inc(num_tokens)
        if gap_s is None or num_tokens == 0:
            return
        itl = series.histograms["itl"]
        for _ in range(num_tokens):
            itl.observe(gap_s / num_tokens)

    def on_finished(self, engine: str, slo: SLO, delta: OutputDelta, e2e_s: float) -> None:
        """A request its instance finished (or that failed with it). Latencies and lengths
        count completed requests only: a rejected or failed one has none to speak of."""
        series, reason = self._engine(engine), delta.finish_reason or "error"
        series.success[reason].inc()
        if reason == "rejected":
            self.on_rejected(slo.class_name, "instance")
        elif reason in ("stop", "length"):
            _observe_completed(series, delta, e2e_s)
            self._judge(slo, delta)
        else:
            self._class(slo.class_name).missed["error" if reason == "error" else "aborted"].inc()

    def _judge(self, slo: SLO, delta: OutputDelta) -> None:
        series = self._class(slo.class_name)
        if delta.tpot_s is not None:
            series.tpot.observe(delta.tpot_s)
        if delta.attained:
            series.attained.inc()
            return
        late_first = delta.ttft_s is None or delta.ttft_s > slo.ttft_s
        series.missed["ttft" if late_first else "tpot"].inc()

    def on_aborted(self, engine: str, slo_class: str) -> None:
        """The client went away before its request finished."""
        self._engine(engine).success["abort"].inc()
        self._class(slo_class).missed["aborted"].inc()

    def observe_overhead(self, seconds: float) -> None:
        self.families.overhead.observe(seconds)
        self.recent_overheads_s.append(seconds)

    def overhead_quantiles_ms(self) -> dict[str, float | int | None]:
        samples = sorted(self.recent_overheads_s)

        def at(q: float) -> float | None:
            if not samples:
                return None
            return 1000.0 * samples[min(len(samples) - 1, int(q * len(samples)))]

        return {"count": len(samples), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}

    # -- P/D hand-offs ----------------------------------------------------------------------

    def on_transfer(self, seconds: float, num_bytes: int, ok: bool) -> None:
        """A decode instance's KV pull ended; a failed one is recomputed."""
        families = self.families
        families.kv_transfer_s.observe(seconds)
        if ok:
            families.kv_transfer_bytes.observe(num_bytes)
        else:
            families.handoff_failures.inc()
            families.recomputes.inc()

    def on_recompute(self) -> None:
        """A hand-off sent without KV (it was lost first): the decode instance recomputes."""
        self.families.recomputes.inc()

    def on_migration(self) -> None:
        """A request moved off a draining instance (`serve --scaler`)."""
        self.families.migrations.inc()

    def on_role_flip(self, seconds: float) -> None:
        """An instance serves in its new role, `seconds` after the decision."""
        self.families.role_flip_s.observe(seconds)

    def set_instances_by_role(self, counts: Mapping[str, int]) -> None:
        for role, gauge in self.families.instances_by_role.items():
            gauge.set(counts.get(role, 0))

    # -- instances --------------------------------------------------------------------------

    def charge_instances(self, now: float, handles: Iterable[InstanceHandle]) -> None:
        """Charge the instances' time since the last charge and move the cost counters
        (`now`: monotonic seconds); call when the instances change and before a scrape."""
        cost, families = self.pool_cost, self.families
        before = {role: (cost.instance_seconds(role), cost.cost_usd(role)) for role in ROLES}
        cost.update(now, handles)
        for role, (seconds, usd) in before.items():
            families.instance_seconds[role].inc(cost.instance_seconds(role) - seconds)
            families.cost_usd[role].inc(cost.cost_usd(role) - usd)

    def observe_instance(self, handle: InstanceHandle) -> None:
        """Set an instance's gauges from its latest report (creating its series)."""
        engine = handle.instance_id
        gauges = self._engine(engine).gauges
        gauges["up"].set(1.0)
        gauges["correction"].set(handle.correction_factor)
        snapshot = handle.snapshot
        if snapshot is not None:
            gauges["running"].set(snapshot.num_running)
            gauges["waiting"].set(snapshot.num_waiting)
            gauges["kv"].set(snapshot.kv_usage)
        # The instance reports a running total; the counter moves by what is new.
        new = handle.num_preemptions - self._num_preemptions.get(engine, 0)
        if new > 0:
            self._engines[engine].counters["preemptions"].inc(new)
            self._num_preemptions[engine] = handle.num_preemptions

    def on_instance_failed(self, engine: str, outcomes: dict[str, int]) -> None:
        """A failure, and what became of its open requests (by `RECOVERY_OUTCOMES`)."""
        # Not through `_engine`: that would bring back the gauges `remove_instance` dropped.
        self.families.engine_counters["failures"].labels(self.model_name, engine).inc()
        for outcome, count in outcomes.items():
            self.families.recovered[outcome].inc(count)

    def on_instance_restarted(self, engine: str) -> None:
        self.families.engine_counters["restarts"].labels(self.model_name, engine).inc()

    def remove_instance(self, engine: str) -> None:
        """Drop a failed or removed instance's gauges. Its counters and histograms stay: they
        are totals over the server's life, and sums over instances must not fall."""
        self.families.drop_gauges(engine)
        self._engines.pop(engine, None)
        self._num_preemptions.pop(engine, None)

    # -- exposition -------------------------------------------------------------------------

    def render(self, num_queued: int, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition in the format the scraper's Accept header asks for (Prometheus text
        by default, OpenMetrics on request), and its content type."""
        self.families.queued.set(num_queued)
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def _observe_completed(series: EngineSeries, delta: OutputDelta, e2e_s: float) -> None:
    """E2E, lengths, and the queue, prefill, decode and inference times from the instance's
    durations."""
    histograms, queue_s, ttft_s = series.histograms, delta.queue_s, delta.ttft_s
    histograms["e2e"].observe(e2e_s)
    histograms["prompt_len"].observe(delta.num_prompt_tokens)
    histograms["output_len"].observe(delta.num_output_tokens)
    histograms["max_output_len"].observe(delta.num_output_tokens)
    if delta.tpot_s is not None:
        histograms["request_tpot"].observe(delta.tpot_s)
    if queue_s is not None:
        histograms["queue"].observe(queue_s)
    if ttft_s is None or queue_s is None:
        return
    prefill_s = ttft_s - queue_s
    decode_s = 0.0 if delta.tpot_s is None else delta.tpot_s * (delta.num_output_tokens - 1)
    histograms["prefill"].observe(prefill_s)
    histograms["decode"].observe(decode_s)
    histograms["inference"].observe(prefill_s + decode_s)
