"""The scheduler's flags: one per `SchedulerConfig` knob, the same in `serve` and `simulate`,
with the field's default, built back into the config; a bad value names its flag."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

import pytest

from hyperflexis.cli import build_parser
from hyperflexis.commands.scheduler_flags import (
    _flag_kwargs,
    add_scheduler_arguments,
    flag_name,
    scheduler_config,
)
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.scheduler.config import knob, knob_fields

SIMULATE_REQUIRED = ["--out", "x.json"]


def _parse(command: str, extra: list[str]) -> argparse.Namespace:
    required = SIMULATE_REQUIRED if command == "simulate" else []
    argv = [command, *required, *extra]
    return build_parser(argv).parse_args(argv)


def test_the_knobs_are_todays_flags() -> None:
    names = [f.name for f in knob_fields()]
    assert names == [
        "max_num_batched_tokens",
        "admission_control",
        "tpot_margin",
        "prefill_rate_margin",
        "late_age_factor",
        "shed_order",
        "oversize_load",
    ]
    assert flag_name("tpot_margin") == "--tpot-margin"


@pytest.mark.parametrize("command", ["serve", "simulate"])
def test_defaults_build_the_default_config(command: str) -> None:
    assert scheduler_config(_parse(command, [])) == SchedulerConfig()


@pytest.mark.parametrize("command", ["serve", "simulate"])
def test_flags_set_their_fields(command: str) -> None:
    extra = ["--max-num-batched-tokens", "512", "--admission-control", "--tpot-margin", "0.1"]
    extra += ["--prefill-rate-margin", "0.3", "--late-age-factor", "1.5", "--shed-order", "work"]
    assert scheduler_config(_parse(command, extra)) == SchedulerConfig(
        max_num_batched_tokens=512,
        admission_control=True,
        tpot_margin=0.1,
        prefill_rate_margin=0.3,
        late_age_factor=1.5,
        shed_order="work",
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-num-batched-tokens", "0"], "invalid --max-num-batched-tokens 0: must be >= 1"),
        (["--tpot-margin", "1"], "invalid --tpot-margin 1.0: must be in [0, 1)"),
        (["--prefill-rate-margin", "-0.5"], "invalid --prefill-rate-margin -0.5: must be in"),
        (["--late-age-factor", "-1"], "invalid --late-age-factor -1.0: must be >= 0"),
    ],
)
def test_a_bad_value_names_its_flag(extra: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        scheduler_config(_parse("serve", extra))


def test_other_field_types_get_flags_too() -> None:
    """What a future knob may be: a switch that defaults on, an optional count."""

    @dataclasses.dataclass(frozen=True)
    class Knobs:
        chunked: bool = knob(True, "split prompts")
        cap: int | None = knob(None, "a cap")

    hints = typing.get_type_hints(Knobs)
    parser = argparse.ArgumentParser()
    for f in dataclasses.fields(Knobs):
        parser.add_argument(flag_name(f.name), dest=f.name, **_flag_kwargs(f, hints[f.name]))
    assert vars(parser.parse_args([])) == {"chunked": True, "cap": None}
    assert vars(parser.parse_args(["--no-chunked", "--cap", "7"])) == {"chunked": False, "cap": 7}


def test_the_group_is_called_scheduler() -> None:
    parser = argparse.ArgumentParser()
    add_scheduler_arguments(parser)
    (group,) = (g for g in parser._action_groups if g.title == "scheduler")
    assert {a.dest for a in group._group_actions} == {f.name for f in knob_fields()}
