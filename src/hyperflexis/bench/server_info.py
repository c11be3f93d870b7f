"""What a benchmark asks a server about itself: the model it serves (OpenAI's `/v1/models`) and,
from a HyperFlexis server, its own per-request overhead (`/debug/stats`), how much slower than
their profile its instances run and how their step times spread (`/debug/instances`), and what
its instances have cost so far with the scaling events behind it (`/metrics`, `/debug/scaling`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# The /metrics counters of instance-seconds and USD by pool (role), without `_total`, as the
# parser names a counter's family.
_COST_FAMILIES = {
    "hyperflexis:instance_seconds": "instance_seconds",
    "hyperflexis:cost_usd": "cost_usd",
}
FLIPPED = "flipped"  # `/debug/scaling`'s event of a role flip done (serving in the new role)


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


@dataclass(frozen=True, slots=True)
class ServerCost:
    """A HyperFlexis server's running totals at one moment: instance-seconds and USD by pool
    (role) from `/metrics`, and its scaling events and migrations so far (`/debug/scaling`;
    none from a fixed server)."""

    instance_seconds: dict[str, float]
    cost_usd: dict[str, float]
    events: tuple[dict[str, Any], ...] = ()
    num_migrations: int = 0


def server_cost(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> ServerCost | None:
    """The server's cost so far; None when it does not report it (not a HyperFlexis server,
    or one that cannot be reached)."""
    root, headers = _root(base_url), _auth(api_key)
    try:
        response = httpx.get(f"{root}/metrics", headers=headers, timeout=timeout_s)
        response.raise_for_status()
        totals: dict[str, dict[str, float]] = {key: {} for key in _COST_FAMILIES.values()}
        for family in text_string_to_metric_families(response.text):
            if family.name not in _COST_FAMILIES:
                continue
            by_role = totals[_COST_FAMILIES[family.name]]
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    role = sample.labels.get("role", "")
                    by_role[role] = by_role.get(role, 0.0) + float(sample.value)
        scaling = httpx.get(f"{root}/debug/scaling", headers=headers, timeout=timeout_s)
    except (httpx.HTTPError, ValueError):
        return None
    if not totals["instance_seconds"]:
        return None
    body = scaling.json() if scaling.status_code == 200 else {}
    events, migrations = body.get("events", []), int(body.get("num_migrations", 0))
    return ServerCost(totals["instance_seconds"], totals["cost_usd"], tuple(events), migrations)


def cost_between(before: ServerCost, after: ServerCost) -> dict[str, Any]:
    """What the server's instances cost from `before` to `after`, for a bench summary:
    instance-seconds and USD by pool and in all, the scaling events in between by kind, the
    role flips done (and each one's time, decision to serving) and the migrations."""
    seconds = {
        r: v - before.instance_seconds.get(r, 0.0) for r, v in after.instance_seconds.items()
    }
    usd = {r: v - before.cost_usd.get(r, 0.0) for r, v in after.cost_usd.items()}
    events = after.events[len(before.events) :]  # the server only appends to its list
    kinds = Counter(str(e.get("event")) for e in events)
    return {
        "instance_seconds": sum(seconds.values()),
        "cost_usd": sum(usd.values()),
        "instance_seconds_by_role": seconds,
        "cost_usd_by_role": usd,
        "scaling_events": dict(sorted(kinds.items())),
        "num_role_flips": kinds.get(FLIPPED, 0),
        "flip_s": [float(e["flip_s"]) for e in events if e.get("event") == FLIPPED],
        "num_migrations": after.num_migrations - before.num_migrations,
        "events": list(events),
    }


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
