from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.cli import main

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run the ``fleet`` CLI in-process; return exit code and captured output."""

    def run(*argv: str) -> CliResult:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors and --help
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@dataclass
class ClickHouse:
    url: str
    env: dict[str, str]   # FLEET_CLICKHOUSE_* for the fleet
    front: object | None  # the chdb fixture (None for a real server)


@pytest.fixture(scope="session")
def clickhouse():
    """ClickHouse's HTTP interface: a real server when FLEET_CLICKHOUSE_URL is set (user and password
    from FLEET_CLICKHOUSE_USER / _PASSWORD), else the chdb fixture -- the ClickHouse engine in
    process behind a minimal HTTP front (tests/chdb_http.py), named as such."""
    import os

    if os.environ.get("FLEET_CLICKHOUSE_URL"):
        env = {k: v for k, v in os.environ.items() if k.startswith("FLEET_CLICKHOUSE_")}
        yield ClickHouse(env["FLEET_CLICKHOUSE_URL"], env, None)
        return
    from chdb_http import ChdbHttp

    with ChdbHttp() as ch:
        yield ClickHouse(ch.url, {"FLEET_CLICKHOUSE_URL": ch.url}, ch)


@pytest.fixture
def clickhouse_db(clickhouse):
    """A fresh database on the ``clickhouse`` fixture, as a fleet ClickHouse sink (the fleet's tables made),
    dropped afterwards."""
    import secrets

    from fleet.results.clickhouse import ClickHouseSink
    from fleet.scenario import ClickHouseOut

    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", user_env="FLEET_CLICKHOUSE_USER",
                        password_env="FLEET_CLICKHOUSE_PASSWORD", database=f"fleet_t{secrets.token_hex(3)}")
    sink = ClickHouseSink(cfg, clickhouse.env)
    try:
        yield sink
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS {cfg.database}")
        sink.close()
