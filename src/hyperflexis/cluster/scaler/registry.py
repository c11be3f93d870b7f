"""Scaler registry: names are what configs and `--help` show; unknown or duplicate names and
settings of the wrong kind fail loudly."""

from __future__ import annotations

from typing import Any

from hyperflexis.cluster.scaler.base import Scaler, ScalerContext

_SCALERS: dict[str, type[Scaler]] = {}


def register_scaler(cls: type[Scaler]) -> type[Scaler]:
    if cls.name in _SCALERS:
        raise ValueError(f"scaler {cls.name!r} is registered twice")
    _SCALERS[cls.name] = cls
    return cls


def scaler_names() -> list[str]:
    return sorted(_SCALERS)


def scaler_class(name: str) -> type[Scaler]:
    try:
        return _SCALERS[name]
    except KeyError:
        raise ValueError(f"unknown scaler {name!r}; known: {', '.join(scaler_names())}") from None


def make_scaler(name: str, context: ScalerContext, config: Any = None) -> Scaler:
    """A scaler by name; `config` must be its settings dataclass (`scaler_class(name)
    .config_type`), or None for the defaults."""
    cls = scaler_class(name)
    if config is not None and (cls.config_type is None or not isinstance(config, cls.config_type)):
        expected = "no settings" if cls.config_type is None else cls.config_type.__name__
        raise ValueError(f"scaler {name!r} takes {expected}, got {type(config).__name__}")
    return cls(context, config)
