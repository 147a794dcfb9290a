"""``fleet dashboard``: a read-only web view of orchestrators, GPUs and workflows over the stored results.

By default it reads the Parquet results under ``--results`` (DuckDB in process: no server needed);
with ``--clickhouse`` it queries ClickHouse with the same views (FLEET_CLICKHOUSE_URL, _USER,
_PASSWORD; database FLEET_CLICKHOUSE_DATABASE, table prefix FLEET_CLICKHOUSE_PREFIX). It binds
127.0.0.1 unless ``--host`` says otherwise. Beside the pages it serves a read-only JSON API under /v1/,
described by the OpenAPI document at /openapi.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleet.errors import InputError


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("dashboard", help="serve the read-only results dashboard", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--results", metavar="DIR", default="results", help="Parquet results directory (default results)")
    src.add_argument("--clickhouse", action="store_true", help="query ClickHouse instead of the Parquet files")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--graduation", metavar="RULES", help="graduation rules (fleet schema graduation; default: "
                   "every model graduates after 3 good days of 10 sessions at score 95, demoted after 2 bad ones)")
    p.add_argument("--demand", metavar="FILE", help="demand per region and the orchestrators' regions, for the "
                   "demand-gap view (fleet schema demand)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.dashboard.engine import ClickHouseEngine, DuckDBEngine

    results: Path | None = Path(args.results)
    engine: ClickHouseEngine | DuckDBEngine
    if args.clickhouse:
        from fleet.results.clickhouse import ClickHouseSink
        from fleet.settings import ClickHouseSettings

        engine = ClickHouseEngine(ClickHouseSink(ClickHouseSettings().output()))
        results = results if results and results.is_dir() else None
    else:
        assert results is not None
        engine = DuckDBEngine(results)
    try:
        serve(args, engine, results)
    finally:
        engine.close()
    return 0


def serve(args: argparse.Namespace, engine: Any, results: Path | None) -> None:
    """Load the rule files, bind, serve until SIGINT or SIGTERM."""
    context: dict[str, Any] = {}
    if args.graduation:
        from fleet.graduation import load_rules

        context["rules"] = load_rules(args.graduation)
    if args.demand:
        from fleet.demand import load_demand, naap_base_url

        context["demand"] = load_demand(args.demand)
        naap_base_url(context["demand"])   # a NaaP address the file names but the environment lacks: say so now
    from fleet.dashboard.server import DashboardServer

    try:
        server = DashboardServer(engine, results, args.host, args.port, **context)
    except OSError as exc:
        raise InputError(f"fleet dashboard: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    print(f"fleet: dashboard at {server.url}/, its API's OpenAPI document at {server.url}/openapi.json "
          "(Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()   # returns on SIGINT or SIGTERM, once stopped gracefully
    finally:
        server.close()
