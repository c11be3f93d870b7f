"""`Registry`: the one registry type behind every name a config or `--help` shows (policies,
dispatchers, scalers, latency models, arrival and length processes, and the transports and backends
to come). Duplicate and unknown names fail loudly, and the error lists the known ones."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (`kind` is the noun errors use, e.g. "scheduling policy")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a name registered twice raises ValueError."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, cls: T) -> T:
        """Class decorator: register a class under its `name` attribute."""
        return self.add(cls.name, cls)  # type: ignore[attr-defined]  # every registered class has one

    def get(self, name: str) -> T:
        """The entry registered as `name`; unknown names raise ValueError listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, sorted (what `--help` shows)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
