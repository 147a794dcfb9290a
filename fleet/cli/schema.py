"""``fleet schema``: the JSON Schema of scenario files (or of graduation rules or demand files), for editor completion."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("schema", help="print the scenario (or graduation rules, or demand) JSON Schema", description=__doc__)
    p.add_argument("kind", nargs="?", choices=("scenario", "graduation", "demand"), default="scenario",
                   help="which file's schema (default scenario)")
    p.set_defaults(run=run)


def scenario_schema() -> dict[str, Any]:
    from fleet.scenario import Scenario

    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleet scenario"
    return schema


def graduation_schema() -> dict[str, Any]:
    from fleet.graduation import GraduationRules

    schema = GraduationRules.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleet graduation rules"
    return schema


def demand_schema() -> dict[str, Any]:
    from fleet.demand import DemandSpec

    schema = DemandSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleet demand"
    return schema


def run(args: argparse.Namespace) -> int:
    schemas = {"scenario": scenario_schema, "graduation": graduation_schema, "demand": demand_schema}
    print(json.dumps(schemas[args.kind](), indent=2))
    return 0
