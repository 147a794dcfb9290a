"""``fleet run SCENARIO``: run a campaign (locally, or as the entrypoint of a Ray job)."""

from __future__ import annotations

import argparse
from typing import Any

from fleet.cli.monitor import http_url



def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("run", help="run a test campaign", description=__doc__)
    p.add_argument("file", metavar="SCENARIO", help="scenario YAML")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--seed", type=int, default=0, help="plan seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="results directory (default: the scenario's outputs.dir)")
    p.add_argument("--gateway-url", metavar="URL", type=http_url, help="send every region's sessions to this gateway")
    p.add_argument("--capacity-url", metavar="URL", type=http_url, help="read the gateway's capacity (/getNetworkCapabilities) "
                   "from this CLI URL (default: target.capacity.url, else the gateway's host at port 5935)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML of the SLA checks here (default: outputs.junit)")
    p.add_argument("--json", action="store_true", help="after the summary, print a slim one as one JSON line "
                   "(campaign.json holds the whole summary)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.runtime.campaign import CampaignOptions, run_campaign

    opts = CampaignOptions(address=args.address, seed=args.seed, out_dir=args.out, gateway_url=args.gateway_url,
                           capacity_url=args.capacity_url, junit=args.junit, json=args.json,
                           progress=False if args.no_progress else None)
    return run_campaign(args.file, opts)
