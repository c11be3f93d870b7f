"""What a benchmark asks a server about itself: the model it serves (OpenAI's `/v1/models`) and,
from a HyperFlexis server, its own per-request overhead (`/debug/stats`) and how much slower than
their profile its instances run, and how their step times spread (`/debug/instances`)."""

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
    factors = [
        float(row["correction_factor"])
        for row in instance_rows(base_url, api_key, timeout_s)
        if row.get("alive") and row.get("correction_factor") is not None
    ]
    return sum(factors) / len(factors) if factors else None


def instance_rows(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """A HyperFlexis server's `GET /debug/instances` rows: per instance its id, state, KV
    blocks (`num_blocks`), online correction and `step_ratio_moments` (count, sum and sum of
    squares of every step's measured/predicted time since it started)."""
    response = httpx.get(
        f"{_root(base_url)}/debug/instances", headers=_auth(api_key), timeout=timeout_s
    )
    response.raise_for_status()
    rows = response.json()
    if not isinstance(rows, list):
        raise ValueError(f"{base_url}/debug/instances is not a list")
    return rows


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root
