"""The ``fleet`` command: an adapter from argv to the domain code.

Each subcommand lives in its own module with ``add(subparsers)`` registering
it and a ``run(args) -> int`` function. A ``FleetError`` becomes its message on
stderr and its exit code; a user mistake never ends in a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, NoReturn

from fleet.cli import (compare, dashboard, gateway, graduation, monitor, plan, prompts, report, results, run, schema,
                       validate)
from fleet.errors import FleetError

__all__ = ["main"]

COMMANDS = (validate, schema, plan, run, monitor, report, compare, results, dashboard, graduation, prompts, gateway)


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
    _plain_help(parser)
    return parser


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Help as plain text: the modules' docstrings (the subcommands' descriptions) are reStructuredText."""
    parser.description = _plain(parser.description)
    for action in parser._actions:
        action.help = _plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _plain_help(child)
            for choice in action._choices_actions:
                choice.help = _plain(choice.help)


def _plain(text: str | None) -> str | None:
    return None if text is None else re.sub(r"``(.+?)``", r"\1", re.sub(r":[a-z]+:`([^`]+)`", r"\1", text))


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
    except BrokenPipeError:   # the reader went away (`fleet schema | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error when Python flushes
        return 0
