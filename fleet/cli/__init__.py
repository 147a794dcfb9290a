"""The ``fleet`` command: an adapter from argv to the domain code.

Each subcommand lives in its own module with ``add(subparsers)`` registering
it and a ``run(args) -> int`` function. A ``FleetError`` becomes its message on
stderr and its exit code; a user mistake never ends in a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from fleet.cli import compare, dashboard, gateway, monitor, plan, prompts, report, results, run, schema, validate
from fleet.errors import FleetError

__all__ = ["main"]

COMMANDS = (validate, schema, plan, run, monitor, report, compare, results, dashboard, prompts, gateway)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 2 with one line, like every usage error
        self.print_usage(sys.stderr)
        sys.stderr.write(f"fleet: error: {message}\n")
        raise SystemExit(2)


class _Version(argparse.Action):
    """``--version``, reading the version only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from fleet import __version__

        print(f"fleet {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleet", description="Stream-testing fleet for the Livepeer real-time AI video network.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the fleet's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except FleetError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        return 130
