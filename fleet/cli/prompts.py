"""``fleet prompts list`` / ``fleet prompts show SET``: the prompt sets on the prompt path."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from fleet.errors import UsageError


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("prompts", help="list and show prompt sets", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    lst = verbs.add_parser("list", help="every prompt set found")
    lst.set_defaults(run=run_list)
    show = verbs.add_parser("show", help="the prompts of one set")
    show.add_argument("set", metavar="SET", help="a set name or a .yaml path")
    show.add_argument("--category", help="only this category")
    show.set_defaults(run=run_show)


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fleet.prompts import available_sets, load_prompt_set

    table = Table("set", "prompts", "categories", "file", box=None)
    for name, path in sorted(available_sets().items()):
        ps = load_prompt_set(path)
        table.add_row(name, str(len(ps.prompts)), ", ".join(ps.categories), str(path))
    Console(width=200).print(table)
    return 0


def _shorten(text: str, width: int = 70) -> str:
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= width else text[: width - 1] + "…"


def run_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fleet.prompts import find_set, load_prompt_set, set_problem

    path = find_set(args.set)
    if path is None:
        raise UsageError(set_problem(args.set, None))
    ps = load_prompt_set(path)
    prompts = [p for p in ps.prompts if args.category in (None, p.category)]
    console = Console(width=200)
    counts = Counter(p.category for p in ps.prompts)
    console.print(f"{ps.name}: {len(ps.prompts)} prompts; " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    if ps.description:
        console.print(ps.description)
    table = Table("id", "category", "text", "params", box=None)
    for p in prompts:
        table.add_row(p.id, p.category, _shorten(p.text) or "(empty)", ", ".join(sorted(p.params)))
    console.print(table)
    return 0
