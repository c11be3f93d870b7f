"""What a benchmark asks a server about itself: the model it serves (OpenAI's `/v1/models`) and,
from a HyperFlexis server, its own per-request overhead (`/debug/stats`) and how much slower than
their profile its instances run (`/debug/instances`)."""

from __future__ import annotations

from typing import Any

import httpx


def served_model_id(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> str:
    """The first model id `GET /v1/models` lists (the name requests must use)."""
    response = httpx.get(f"{_root(base_url)}/v1/models", headers=_auth(api_key), timeout=timeout_s)
    response.raise_for_status()
    data = response.json().get("data") or []
    if not data or "id" not in data[0]:
        raise ValueError(f"{base_url}/v1/models lists no model")
    return str(data[0]["id"])


def server_overhead_ms(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """A HyperFlexis server's own time per request before an instance gets it (HTTP parsing,
    tokenisation, SLO resolution, dispatch): `count`, `p50`, `p90`, `p99` in ms over its
    recent requests, from `GET /debug/stats` (which needs the key of a keyed server)."""
    response = httpx.get(
        f"{_root(base_url)}/debug/stats", headers=_auth(api_key), timeout=timeout_s
    )
    response.raise_for_status()
    stats = response.json().get("server_overhead_ms")
    if not isinstance(stats, dict):
        raise ValueError(f"{base_url}/debug/stats has no 'server_overhead_ms'")
    return stats


def correction_factor(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> float | None:
    """A HyperFlexis server's measured/predicted step time, the mean of its live instances'
    online corrections (`GET /debug/instances`); None when no live instance has one."""
    response = httpx.get(
        f"{_root(base_url)}/debug/instances", headers=_auth(api_key), timeout=timeout_s
    )
    response.raise_for_status()
    factors = [
        float(row["correction_factor"])
        for row in response.json()
        if row.get("alive") and row.get("correction_factor") is not None
    ]
    return sum(factors) / len(factors) if factors else None


def metric_total(
    base_url: str, name: str, api_key: str | None = None, timeout_s: float = 10.0
) -> float:
    """The sum of every `GET /metrics` sample called `name` (0 when none is exported)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{_root(base_url)}/metrics", headers=_auth(api_key), timeout=timeout_s)
    response.raise_for_status()
    families = text_string_to_metric_families(response.text)
    return sum(s.value for f in families for s in f.samples if s.name == name)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root
