"""Reading a /metrics exposition in tests, with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def has(text: str, name: str, **labels: str) -> bool:
    """True when a sample called `name` with (at least) `labels` is exported."""
    return any(
        s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        for s in samples(text)
    )
