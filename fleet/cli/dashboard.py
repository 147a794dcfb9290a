"""``fleet dashboard``: a read-only web view of orchestrators, GPUs and workflows over the stored results.

By default it reads the Parquet results under ``--results`` (DuckDB in process: no server needed);
with ``--clickhouse`` it queries ClickHouse with the same views (FLEET_CLICKHOUSE_URL, _USER,
_PASSWORD; database FLEET_CLICKHOUSE_DATABASE, table prefix FLEET_CLICKHOUSE_PREFIX). It binds
127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import signal
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
    p.set_defaults(run=run)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the server as Ctrl-C does


def run(args: argparse.Namespace) -> int:
    from fleet.dashboard.engine import ClickHouseEngine, DuckDBEngine
    from fleet.dashboard.server import DashboardServer

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
        server = DashboardServer(engine, results, args.host, args.port)
    except OSError as exc:
        raise InputError(f"fleet dashboard: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    print(f"fleet: dashboard at {server.url}/ (Ctrl-C to stop)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
