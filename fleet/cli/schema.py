"""``fleet schema``: the JSON Schema of scenario files, for editor completion."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("schema", help="print the scenario JSON Schema", description=__doc__)
    p.set_defaults(run=run)


def scenario_schema() -> dict[str, Any]:
    from fleet.scenario import Scenario

    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleet scenario"
    return schema


def run(args: argparse.Namespace) -> int:
    print(json.dumps(scenario_schema(), indent=2))
    return 0
