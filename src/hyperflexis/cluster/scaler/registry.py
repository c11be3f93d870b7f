"""Scaler registry: names are what configs and `--help` show; unknown or duplicate names and
settings of the wrong kind fail loudly."""

from __future__ import annotations

from typing import Any

from hyperflexis.cluster.scaler.base import Scaler, ScalerContext
from hyperflexis.core.registry import Registry

_SCALERS: Registry[type[Scaler]] = Registry("scaler")
register_scaler = _SCALERS.register
scaler_names = _SCALERS.names
scaler_class = _SCALERS.get


def make_scaler(name: str, context: ScalerContext, config: Any = None) -> Scaler:
    """A scaler by name; `config` must be its settings dataclass (`scaler_class(name)
    .config_type`), or None for the defaults."""
    cls = scaler_class(name)
    if config is not None and (cls.config_type is None or not isinstance(config, cls.config_type)):
        expected = "no settings" if cls.config_type is None else cls.config_type.__name__
        raise ValueError(f"scaler {name!r} takes {expected}, got {type(config).__name__}")
    return cls(context, config)
