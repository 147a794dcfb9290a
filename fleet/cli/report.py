"""``fleet report CAMPAIGN_DIR [--out FILE]``: one self-contained HTML report of a campaign."""

from __future__ import annotations

import argparse
from typing import Any



def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("report", help="write a campaign's HTML report", description=__doc__)
    p.add_argument("dir", metavar="CAMPAIGN_DIR", help="a campaign directory (results/campaign=ID)")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: CAMPAIGN_DIR/report.html)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.results.report import write_report
    from fleet.results.sink import find_campaign

    print(write_report(find_campaign(args.dir), args.out))
    return 0
