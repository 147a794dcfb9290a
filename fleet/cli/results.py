"""``fleet results push CAMPAIGN_DIR``: load an existing campaign into ClickHouse (idempotent).

The connection comes from the scenario's ``outputs.clickhouse`` variables when the
campaign's scenario names them, else from FLEET_CLICKHOUSE_URL / _USER / _PASSWORD
(database FLEET_CLICKHOUSE_DATABASE, default fleet; table prefix FLEET_CLICKHOUSE_PREFIX,
default fleet_). A batch already loaded (streamed live, or pushed before) is stored once.
"""

from __future__ import annotations

import argparse
from typing import Any


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("results", help="work with stored results", description=__doc__)
    rs = p.add_subparsers(dest="results_command", metavar="ACTION", parser_class=type(p))
    rs.required = True
    push = rs.add_parser("push", help="load a campaign directory into ClickHouse", description=__doc__)
    push.add_argument("dir", metavar="CAMPAIGN_DIR", help="a campaign directory (results/campaign=ID)")
    push.add_argument("--database", help="default: $FLEET_CLICKHOUSE_DATABASE, else fleet")
    push.add_argument("--table-prefix", help="default: $FLEET_CLICKHOUSE_PREFIX, else fleet_")
    push.set_defaults(run=run_push)


def run_push(args: argparse.Namespace) -> int:
    from fleet.results.clickhouse import ClickHouseSink, push_campaign
    from fleet.results.sink import find_campaign
    from fleet.settings import ClickHouseSettings

    cfg = ClickHouseSettings().output(args.database, args.table_prefix)
    sink = ClickHouseSink(cfg)
    try:
        counts = push_campaign(find_campaign(args.dir), sink)
    finally:
        sink.close()
    print("pushed " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" rows to {cfg.database}.{cfg.table_prefix}*")
    return 0
