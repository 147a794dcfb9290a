"""The fleet's tester behind NAT, for tests/test_nat.py.

Run inside a network namespace whose only route is to the TURN host: loads the scenario, runs one session
through ``fleet.runtime.runner.RegionRunner`` as a campaign's runner does (the TURN username and credential
read from the environment variables the scenario names) and prints the session's row as one JSON line.

    python nat_probe.py SCENARIO GATEWAY_URL DURATION_S
"""

from __future__ import annotations

import asyncio
import json
import sys

from fleet.probe.types import PromptChange
from fleet.runtime.job import Job
from fleet.runtime.runner import RegionRunner
from fleet.scenario import load_scenario


async def main(scenario_path: str, gateway_url: str, duration_s: float) -> None:
    scenario = load_scenario(scenario_path)
    runner = RegionRunner("nat", scenario.model_dump(mode="json"), str(scenario.base_dir))
    job = Job("nat-00001", gateway_url, duration_s, (PromptChange(0.0, {"prompt": "a watercolour fox"}),))
    row = await runner.run_session(job)
    record = row.record()
    record["started_at"] = record["started_at"].isoformat() if record["started_at"] else None
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
