"""The scheduler's flags, shared by `hyperflexis serve` and `hyperflexis simulate`: one per
`SchedulerConfig` knob, named after its field (`tpot_margin` -> `--tpot-margin`), with the
field's default; `scheduler_config` builds the config back and names the flag a bad value came
from."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import Field
from typing import Any

from hyperflexis.scheduler.config import (
    KNOB_HELP,
    InvalidSchedulerField,
    SchedulerConfig,
    knob_fields,
)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    """A "scheduler" group with one flag per knob."""
    group = parser.add_argument_group("scheduler", "settings of every instance's scheduler")
    hints = typing.get_type_hints(SchedulerConfig)
    for f in knob_fields():
        group.add_argument(flag_name(f.name), dest=f.name, **_flag_kwargs(f, hints[f.name]))


def scheduler_config(args: argparse.Namespace) -> SchedulerConfig:
    """The config the knob flags in `args` describe; a bad value raises ValueError naming its
    flag (the CLI prints it and exits 2)."""
    values = {f.name: getattr(args, f.name) for f in knob_fields()}
    try:
        return SchedulerConfig(**values)
    except InvalidSchedulerField as exc:
        if exc.field not in values:  # not a flag's field: the config's own message says it all
            raise
        value = values[exc.field]
        raise ValueError(f"invalid {flag_name(exc.field)} {value}: {exc.reason}") from None


def _flag_kwargs(f: Field[Any], hint: Any) -> dict[str, Any]:
    """argparse settings from the field's type: a bool is a switch (`--no-NAME` turns a default
    True off), `X | None` takes an X."""
    help_text: str = f.metadata[KNOB_HELP]
    if hint is bool:
        if f.default:
            return {"action": argparse.BooleanOptionalAction, "default": True, "help": help_text}
        return {"action": "store_true", "help": help_text}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint not in (int, float, str):
        raise TypeError(f"scheduler knob {f.name!r}: no flag for type {hint!r}")
    return {"type": hint, "default": f.default, "help": f"{help_text} (default: %(default)s)"}
