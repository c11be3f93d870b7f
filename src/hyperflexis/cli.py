"""`hyperflexis` command line: one subcommand per module under `hyperflexis.commands`.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `--help` stays fast and a command's heavy
dependencies (torch, FastAPI) load only when needed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

COMMANDS: dict[str, str] = {
    "generate": "Generate a completion offline on one instance.",
    "profile": "Measure step times over batch shapes and fit the step latency model.",
    "simulate": "Simulate a cluster on a virtual clock and report SLO attainment.",
    "serve": "Serve an OpenAI-compatible API over a multi-instance cluster.",
    "bench": "Load-test an OpenAI-compatible server with multi-SLO traffic.",
    "report": "Recompute a run's summary from its per-request records; per-class tables and plots.",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"hyperflexis.commands.{name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperflexis", description="HyperFlexis: multi-SLO LLM serving."
    )
    from hyperflexis import __version__

    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen subcommand's module is imported to add its arguments.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _module(name).add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(_module(args.command).run(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"hyperflexis {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
