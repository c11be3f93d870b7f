"""Parameter checks shared by the workload builders; each error names the parameter."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from hyperflexis.core.registry import Registry


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """`value` if it is an int (not a bool) >= `minimum`, else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid parameter {name!r}: expected an int >= {minimum}, got {value!r}")
    return value


def check_positive(value: Any, name: str, allow_inf: bool = False) -> float:
    """`value` as a float if it is a number > 0 (and finite unless `allow_inf`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"invalid parameter {name!r}: expected a number > 0, got {value!r}")
    return float(value)


def check_at_least(value: Any, name: str, minimum: float) -> float:
    """`value` as a float if it is a finite number >= `minimum`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        raise ValueError(
            f"invalid parameter {name!r}: expected a number >= {minimum}, got {value!r}"
        )
    return float(value)


def make_registered(registry: Registry[type[Any]], name: str, params: dict[str, Any]) -> Any:
    """An instance of `registry[name]` from keyword `params`; unknown names, unknown parameters
    and missing parameters raise ValueError saying which (rather than a TypeError)."""
    cls = registry.get(name)
    kind = registry.kind
    fields = dataclasses.fields(cls)
    expected = ", ".join(f.name for f in fields)
    for key in params:
        if key not in {f.name for f in fields}:
            raise ValueError(f"invalid parameter {key!r} for {kind} {name!r}; expected: {expected}")
    for field in fields:
        no_default = field.default is dataclasses.MISSING
        if no_default and field.default_factory is dataclasses.MISSING and field.name not in params:
            raise ValueError(f"missing parameter {field.name!r} for {kind} {name!r}")
    return cls(**params)
