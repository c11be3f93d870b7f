"""The shipped Grafana dashboard against one live `hyperflexis serve` (module-scoped): after a
few requests, every series its PromQL queries is exported, with the labels it matches and groups
by; so are the series vLLM's own example dashboard queries. The instance-side durations (queue,
prefill, decode, inter-token) arrive over the pipe with real values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.samples import Sample

from tests.server.live import LiveServer, start_server, stop_server
from tests.server.scrape import samples, value

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "hyperflexis.json"

# What vLLM's example Grafana dashboard (examples/online_serving/prometheus_grafana) queries,
# each with a model_name matcher: a vLLM user's dashboard keeps working.
VLLM_EXAMPLE_DASHBOARD = (
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_per_output_token_seconds_bucket",
    "vllm:time_per_output_token_seconds_sum",
    "vllm:time_per_output_token_seconds_count",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:gpu_cache_usage_perc",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_success_total",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_max_num_generation_tokens_sum",
)

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"')
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)")
_KEYWORDS = frozenset(("and", "or", "unless", "offset", "bool"))


def parse_promql(expr: str) -> tuple[list[tuple[str, dict[str, str]]], set[str]]:
    """The selectors of a PromQL expression (metric name and its equality matchers) and the
    labels it groups or matches on. Enough PromQL for dashboards: functions and aggregations are the
    names followed by a parenthesis."""
    grouping = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
    bare = _RANGE.sub("", _GROUPING.sub(" ", expr))
    selectors = [
        (name, dict(_MATCHER.findall(braces)))
        for name, braces, call in _SELECTOR.findall(bare)
        if not call and name not in _KEYWORDS
    ]
    return selectors, grouping - {""}


def test_parse_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, slo_class) (rate(a:b_bucket{model_name="$m"}'
        "[$__rate_interval]))) / ignoring(x) count(c:d)"
    )
    assert parse_promql(expr) == (
        [("a:b_bucket", {"model_name": "$m"}), ("c:d", {})],
        {"le", "slo_class", "x"},
    )


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.fullmatch(variable["definition"])
            assert match is not None, variable["definition"]
            exprs.append(f"sum by ({match[2]}) ({match[1]})")
    return exprs


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_model_dir: Path, fixed_profile: Path
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("dashboard-server")
    live = start_server(
        ["--instances", "1", "--model", str(server_model_dir), "--profile", str(fixed_profile)],
        tmp,
    )
    yield live
    stop_server(live.process)


@pytest.fixture(scope="module")
def exported(server: LiveServer) -> tuple[str, str]:
    """(model name, /metrics text) after a few requests, streamed and not."""
    with server.client() as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        for max_tokens in (1, 6):
            body = {"prompt": "The children ran", "max_tokens": max_tokens, "ignore_eos": True}
            assert client.post("/v1/completions", json=body).status_code == 200
        messages = [{"role": "user", "content": "hi"}]
        chat = {"messages": messages, "max_tokens": 5, "ignore_eos": True, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=chat) as response:
            assert response.status_code == 200 and "[DONE]" in response.read().decode()
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return model, text


def _matching(found: list[Sample], name: str, matchers: dict[str, str]) -> list[Sample]:
    return [
        s
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in matchers.items())
    ]


def unresolved(exprs: list[str], text: str, model: str) -> tuple[list[str], set[str]]:
    """What in `exprs` the exposition `text` does not answer (a selector no sample matches, a
    grouping label none of its samples has), and the metric names the queries use."""
    found = samples(text)
    problems: list[str] = []
    names: set[str] = set()
    for expr in exprs:
        selectors, grouping = parse_promql(expr.replace("$model_name", model))
        matched: list[Sample] = []
        for name, matchers in selectors:
            hits = _matching(found, name, matchers)
            if not hits or not name.startswith(("vllm:", "hyperflexis:")):
                problems.append(f"{name}{matchers} in {expr}")
            matched += hits
            names.add(name)
        problems += [f"label {label} in {expr}" for label in grouping if not _has(matched, label)]
        if not selectors:
            problems.append(f"no series in {expr}")
    return problems, names


def _has(found: list[Sample], label: str) -> bool:
    return any(label in s.labels for s in found)


def test_unresolved_names_what_is_missing() -> None:
    text = 'vllm:x_total{model_name="m",engine="0"} 1\nother:y 1\n'
    exprs = [
        'sum by (engine) (rate(vllm:x_total{model_name="$model_name"}[1m]))',
        'vllm:x_total{model_name="n"}',  # another model
        "hyperflexis:y",  # not exported
        "other:y",  # exported, but not a series of ours: the parse went wrong
        "sum by (z) (vllm:x_total)",
    ]
    problems, names = unresolved(exprs, text, "m")
    assert problems == [
        "vllm:x_total{'model_name': 'n'} in vllm:x_total{model_name=\"n\"}",
        "hyperflexis:y{} in hyperflexis:y",
        "other:y{} in other:y",
        "label z in sum by (z) (vllm:x_total)",
    ]
    assert names == {"vllm:x_total", "hyperflexis:y", "other:y"}


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert x >= 0 and x + w <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model_name"}


def test_every_dashboard_query_resolves(exported: tuple[str, str]) -> None:
    model, text = exported
    problems, names = unresolved(_queries(), text, model)
    assert not problems
    assert len(names) >= 25  # the parse found the dashboard's series, not a few stray words


def test_vllm_example_dashboard_series_are_exported(exported: tuple[str, str]) -> None:
    model, text = exported
    found = samples(text)
    missing = [n for n in VLLM_EXAMPLE_DASHBOARD if not _matching(found, n, {"model_name": model})]
    assert not missing


def test_instance_durations_reach_the_histograms(exported: tuple[str, str]) -> None:
    _, text = exported
    # Three requests finished; the 6- and 5-token ones gave 5 + 4 inter-token gaps.
    for phase in ("queue", "prefill", "decode", "inference"):
        assert value(text, f"vllm:request_{phase}_time_seconds_count") == 3, phase
    assert value(text, "vllm:request_prefill_time_seconds_sum") > 0
    assert value(text, "vllm:inter_token_latency_seconds_count") == 9
    assert value(text, "vllm:inter_token_latency_seconds_sum") > 0
    e2e = value(text, "vllm:e2e_request_latency_seconds_sum")
    inference = value(text, "vllm:request_inference_time_seconds_sum")
    assert 0 < inference < e2e
    assert value(text, "vllm:request_success_total", finished_reason="length") >= 2
