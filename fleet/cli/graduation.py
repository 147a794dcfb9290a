"""``fleet graduation``: which orchestrator x GPU pairs have earned a workflow, by a rules file.

Reads the stored sessions (the Parquet results under ``--results``, or ClickHouse with ``--clickhouse``
as ``fleet dashboard`` does), scores each pair's UTC days over ``--days`` and applies the rules
(``fleet schema graduation`` gives their JSON Schema). Every pair starts unproven on the first of those
days: its state is what they earned. Prints each pair's state, when it changed and the days that made
it; ``--json`` prints the board as one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("graduation", help="graduation states of orchestrator x GPU pairs for a workflow",
                       description=__doc__)
    p.add_argument("rules", metavar="RULES", help="graduation rules file (YAML)")
    p.add_argument("--model", required=True, help="the workflow's model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--results", metavar="DIR", default="results", help="Parquet results directory (default results)")
    src.add_argument("--clickhouse", action="store_true", help="read ClickHouse instead of the Parquet files")
    p.add_argument("--days", type=int, default=30, help="UTC days scored, up to today (default 30)")
    p.add_argument("--json", action="store_true", help="print the board as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.dashboard.engine import ClickHouseEngine, DuckDBEngine
    from fleet.dashboard.graduation import board
    from fleet.errors import InputError
    from fleet.graduation import load_rules, rule_for

    if not 1 <= args.days <= 366:
        raise InputError(f"--days {args.days}: give 1 to 366 days")
    rules = load_rules(args.rules)
    if rule_for(rules, args.model) is None:
        raise InputError(f"{args.rules}: no rule names model {args.model!r} (add one, or one for \"*\")")
    engine: ClickHouseEngine | DuckDBEngine
    if args.clickhouse:
        from fleet.results.clickhouse import ClickHouseSink
        from fleet.settings import ClickHouseSettings

        engine = ClickHouseEngine(ClickHouseSink(ClickHouseSettings().output()))
    else:
        engine = DuckDBEngine(args.results)
    rows = board(engine, rules, args.model, args.days)
    rule = rule_for(rules, args.model)
    assert rule is not None
    if args.json:
        print(json.dumps({"model": args.model, "days": args.days, "pairs": rows}))
        return 0
    if not rows:
        print(f"fleet: no sessions of {args.model!r} in the last {args.days} day(s)")
    for r in rows:
        last = r["changes"][-1] if r["changes"] else None
        since = f" since {last['day']} ({', '.join(last['evidence'])})" if last else ""
        judged = sum(1 for d in r["days"] if d["score"] is not None and d["counted"] >= rule.graduate.min_sessions)
        print(f"{r['orchestrator']}  {r['gpu']}: {r['state']}{since}; {judged} judged day(s)")
    return 0
