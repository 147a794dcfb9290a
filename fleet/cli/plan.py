"""``fleet plan FILE``: the sessions a campaign would run, without running them."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fleet.errors import UsageError

if TYPE_CHECKING:  # imported where used: `fleet --help` starts without pydantic models or rich
    from fleet.capacity import CapacitySnapshot
    from fleet.plan import Plan
    from fleet.scenario import Scenario

TABLE_ROWS = 40


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("plan", help="show the session plan of a scenario", description=__doc__)
    p.add_argument("file", metavar="FILE", help="scenario YAML")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--capacity", type=int, metavar="N", help="assume N idle slots, orchestrators unknown")
    cap.add_argument("--capacity-file", metavar="F",
                     help="a saved getNetworkCapabilities or NaaP /v1/streaming/models response (JSON)")
    p.add_argument("--seed", type=int, default=0, help="plan seed (default 0): same seed, same plan")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=run)


def snapshot_for(scenario: Scenario, capacity: int | None, capacity_file: str | None) -> CapacitySnapshot:
    from fleet.capacity import load_capacity_file, static_capacity
    from fleet.gateway.config import reference_capacity
    from fleet.scenario import StaticCapacity

    """The capacity to plan against: the command line's, else what the scenario can say offline."""
    model = scenario.workflow.pipeline
    if capacity is not None:
        if capacity < 0:
            raise UsageError(f"--capacity must be >= 0, got {capacity}")
        return static_capacity(capacity, model)
    if capacity_file is not None:
        return load_capacity_file(capacity_file, model)
    source = scenario.target.capacity
    if isinstance(source, StaticCapacity):
        return static_capacity(source.slots, model)
    if scenario.target.dialect == "reference" and scenario.target.url is None:
        return reference_capacity(model)
    raise UsageError(f"{scenario.name} reads capacity from the {source.source} at run time; "
                     "give --capacity N or --capacity-file F to plan offline")


def run(args: argparse.Namespace) -> int:
    from fleet.plan import make_plan
    from fleet.prompts import resolve_pool
    from fleet.scenario import load_scenario

    scenario = load_scenario(args.file)
    pool = resolve_pool(scenario.prompts.sets, scenario.base_dir, scenario.source)
    plan = make_plan(scenario, snapshot_for(scenario, args.capacity, args.capacity_file), args.seed, pool=pool)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_plan(plan)
    return 0


def print_plan(plan: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    cap = plan.capacity
    console.print(f"[bold]{plan.scenario}[/] (hash {plan.scenario_hash}, seed {plan.seed})")
    console.print(f"capacity: {cap['total_slots']} slots, {cap['idle_slots']} idle, {cap['orchestrators']} "
                  f"orchestrators ({cap['source']}); campaign cap {plan.budget} concurrent streams")
    console.print(f"{len(plan.sessions)} sessions, peak {plan.max_concurrency()} concurrent, "
                  f"{len(plan.skipped)} skipped for capacity; starts within {plan.window_s:g} s, "
                  f"all done by {plan.end_s:g} s")
    for note in plan.notes:
        console.print(f"note: {note}")
    table = Table("#", "start s", "length s", "region", "orchestrator", "prompts", box=None)
    for s in plan.sessions[:TABLE_ROWS]:
        prompts = " → ".join(f"{p.prompt_id}@{p.at_s:g}" if p.at_s else p.prompt_id for p in s.prompts)
        table.add_row(str(s.index), f"{s.start_s:.3f}", f"{s.duration_s:.3f}", s.region,
                      s.orchestrator or "(gateway picks)", prompts)
    console.print(table)
    if len(plan.sessions) > TABLE_ROWS:
        console.print(f"... {len(plan.sessions) - TABLE_ROWS} more (use --json for all)")
    reasons: dict[str, int] = {}
    for sk in plan.skipped:
        reasons[sk.reason] = reasons.get(sk.reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        console.print(f"skipped {n}: {reason}")
