"""``fleet schema``: the JSON Schema of scenario files (or of graduation rules files), for editor completion."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("schema", help="print the scenario (or graduation rules) JSON Schema", description=__doc__)
    p.add_argument("kind", nargs="?", choices=("scenario", "graduation"), default="scenario",
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


def run(args: argparse.Namespace) -> int:
    print(json.dumps(graduation_schema() if args.kind == "graduation" else scenario_schema(), indent=2))
    return 0
