"""Service-level objectives: per-request targets and the named classes a config file defines."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

LateAction = Literal["serve", "reject"]
_LATE_ACTIONS = ("serve", "reject")


def mean_tpot_s(
    first_token_s: float | None, finish_s: float | None, num_output_tokens: int
) -> float | None:
    """The mean TPOT an SLO's `tpot_s` is judged on: (E2E - TTFT) / (output tokens - 1), i.e. the
    time from the first token to the end over the tokens after the first. None without a first
    token and an end, or with fewer than two tokens (there is no gap to measure)."""
    if first_token_s is None or finish_s is None or num_output_tokens < 2:
        return None
    # finish - first is E2E - TTFT with the arrival cancelled exactly, not rounded twice.
    return (finish_s - first_token_s) / (num_output_tokens - 1)


def token_lateness_s(
    time_s: float, index: int, arrival_s: float, ttft_slo_s: float, tpot_slo_s: float
) -> float:
    """How late output token `index` (0 is the first) came under per-token deadlines: token i is
    due by arrival + TTFT SLO + i x TPOT SLO, so <= 0 means on time. The stricter TPOT view beside
    `mean_tpot_s`: a stream that stalls and then catches up meets its mean but not its deadlines
    (a request attains under this view when its largest lateness is <= 0)."""
    return time_s - (arrival_s + ttft_slo_s + index * tpot_slo_s)


@dataclass(frozen=True, slots=True)
class SLO:
    """What one request was promised."""

    ttft_s: float  # first token within this many seconds of arrival
    tpot_s: float  # mean seconds per output token after the first
    priority: int = 1  # 0 is the most important
    class_name: str = "custom"  # the SLO class it came from, for metrics
    late: LateAction = "serve"  # when it can no longer meet its TTFT: best effort, or reject

    def __post_init__(self) -> None:
        _positive(self.ttft_s, "ttft_s")
        _positive(self.tpot_s, "tpot_s")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(
                f"invalid SLO field 'priority': expected an int, got {self.priority!r}"
            )
        if self.late not in _LATE_ACTIONS:
            raise ValueError(f"invalid SLO field 'late': expected one of {_LATE_ACTIONS}")


@dataclass(frozen=True, slots=True)
class SLOClass:
    """A named SLO, as configured."""

    name: str
    ttft_s: float
    tpot_s: float
    priority: int
    late: LateAction = "serve"

    def slo(self) -> SLO:
        return SLO(self.ttft_s, self.tpot_s, self.priority, self.name, self.late)


DEFAULT_CLASSES: tuple[SLOClass, ...] = (
    # Interactive clients would rather retry elsewhere than wait (only with admission control).
    SLOClass("interactive", ttft_s=0.5, tpot_s=0.040, priority=0, late="reject"),
    SLOClass("standard", ttft_s=2.0, tpot_s=0.100, priority=1),
    SLOClass("batch", ttft_s=10.0, tpot_s=0.300, priority=2),
)


class SLOClasses(Mapping[str, SLOClass]):
    """The SLO classes in force, by name; `default` names the class of requests that give none.

    A config file (TOML, YAML or JSON) holds a table `classes` of `name -> {ttft_ms | ttft_s,
    tpot_ms | tpot_s, priority, late}`, an optional `default` class name, and an optional table
    `api_keys` of `key -> most important class name it may ask for`.
    """

    def __init__(
        self,
        classes: tuple[SLOClass, ...] = DEFAULT_CLASSES,
        default: str = "standard",
        api_keys: Mapping[str, str] | None = None,
    ) -> None:
        self._classes = {c.name: c for c in classes}
        if len(self._classes) != len(classes):
            raise ValueError("invalid SLO classes: duplicate class name")
        if default not in self._classes:
            raise ValueError(f"invalid SLO field 'default': unknown class {default!r}")
        self.default = default
        self.api_keys = dict(api_keys or {})
        for key, name in self.api_keys.items():
            if name not in self._classes:
                raise ValueError(f"invalid SLO field 'api_keys.{key}': unknown class {name!r}")

    def __getitem__(self, name: str) -> SLOClass:
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            raise ValueError(f"unknown SLO class {name!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def resolve(
        self,
        class_name: str | None = None,
        ttft_s: float | None = None,
        tpot_s: float | None = None,
        priority: int | None = None,
    ) -> SLO:
        """The SLO of a request that names a class (or none) and may override its values."""
        base = self[class_name or self.default]
        return SLO(
            ttft_s=base.ttft_s if ttft_s is None else ttft_s,
            tpot_s=base.tpot_s if tpot_s is None else tpot_s,
            priority=base.priority if priority is None else priority,
            class_name=base.name,
            late=base.late,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> SLOClasses:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read SLO config {path}: {exc}") from exc
        try:
            if path.suffix == ".toml":
                data: Any = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            elif path.suffix == ".json":
                data = json.loads(text)
            else:
                raise ValueError("expected a .toml, .yaml, .yml or .json file")
        except ValueError as exc:
            raise ValueError(f"invalid SLO config {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "SLO config") -> SLOClasses:
        if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
            raise ValueError(f"invalid {source}: field 'classes' must be a table of classes")
        classes = tuple(
            _parse_class(name, fields, source) for name, fields in data["classes"].items()
        )
        if not classes:
            raise ValueError(f"invalid {source}: field 'classes' is empty")
        default = data.get(
            "default", "standard" if "standard" in data["classes"] else classes[0].name
        )
        api_keys = data.get("api_keys", {})
        if not isinstance(api_keys, dict):
            raise ValueError(f"invalid {source}: field 'api_keys' must be a table")
        try:
            return cls(classes, default=default, api_keys=api_keys)
        except ValueError as exc:
            raise ValueError(f"invalid {source}: {exc}") from exc


def _parse_class(name: str, fields: Any, source: str) -> SLOClass:
    where = f"classes.{name}"
    if not isinstance(fields, dict):
        raise ValueError(f"invalid {source}: field '{where}' must be a table")
    known = {"ttft_ms", "ttft_s", "tpot_ms", "tpot_s", "priority", "late"}
    for key in fields:
        if key not in known:
            raise ValueError(f"invalid {source}: unknown field '{where}.{key}'")

    def seconds(stem: str) -> float:
        if f"{stem}_s" in fields:
            return _positive(fields[f"{stem}_s"], f"{where}.{stem}_s", source)
        if f"{stem}_ms" in fields:
            return _positive(fields[f"{stem}_ms"], f"{where}.{stem}_ms", source) / 1000.0
        raise ValueError(f"invalid {source}: missing field '{where}.{stem}_ms'")

    priority = fields.get("priority", 1)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"invalid {source}: field '{where}.priority' must be an int")
    late = fields.get("late", "serve")
    if late not in _LATE_ACTIONS:
        raise ValueError(f"invalid {source}: field '{where}.late' must be 'serve' or 'reject'")
    return SLOClass(name, seconds("ttft"), seconds("tpot"), priority, late)


def _positive(value: Any, name: str, source: str = "SLO") -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"invalid {source} field {name!r}: expected a number > 0, got {value!r}")
    return float(value)
