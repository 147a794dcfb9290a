"""``fleet validate FILE...``: 0 when every file is valid, 1 when any is not."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fleet.errors import InputError


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("validate", help="check scenario files", description=__doc__)
    p.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.scenario import load_scenario

    bad = 0
    for name in args.files:
        try:
            scenario = load_scenario(name)
        except InputError as exc:
            bad += 1
            print(str(exc), file=sys.stderr)
            continue
        if not args.quiet:
            print(f"{name}: ok ({scenario.name}, {scenario.target.dialect}, {scenario.load.shape})")
        for note in scenario.media.notes():
            print(f"{name}: note: {note}")
    return 1 if bad else 0
