"""The dashboard's query engines: DuckDB embedded over the Parquet results, or ClickHouse.

Both run the same queries (fleet.dashboard.queries), written once with the few functions whose
spelling differs between the two (quantiles, time buckets, parameters) taken from the engine's
``Dialect``. Every value a user gives travels as a bound parameter, never as SQL text.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fleet.errors import InputError, ResultsError
from fleet.results.sink import TABLES

__all__ = ["KINDS", "ClickHouseEngine", "Dialect", "DuckDBEngine", "Engine"]

KINDS = ("sessions", "samples", "capacity")   # the tables the views read


@dataclass(frozen=True)
class Dialect:
    name: str

    def quantile(self, expr: str, p: float) -> str:
        return f"quantile_cont({expr}, {p})" if self.name == "duckdb" else f"quantile({p})({expr})"

    def param(self, name: str, kind: str) -> str:
        """A bound parameter: ``kind`` is String, Float64 or DateTime64."""
        if self.name == "duckdb":
            return f"${name}"
        return "{%s:%s}" % (name, {"DateTime64": "DateTime64(3, 'UTC')"}.get(kind, kind))

    def bucket(self, unit: str, expr: str) -> str:
        return f"date_trunc('{unit}', {expr})"

    def bucket_unix(self, unit: str, expr: str) -> str:
        """The start of the UTC ``unit`` (minute, hour, day) holding the time ``expr``, in Unix seconds. DuckDB by
        arithmetic on the epoch: its date_trunc on a time zone's timestamps goes through ICU's calendar, five
        times slower over the capacity series' millions of rows."""
        if self.name == "duckdb":
            width = {"minute": 60, "hour": 3600, "day": 86_400}[unit]
            return f"(floor(epoch({expr}) / {width}) * {width})"
        return self.epoch(self.bucket(unit, expr))

    def epoch(self, expr: str) -> str:
        return f"epoch({expr})" if self.name == "duckdb" else f"toUnixTimestamp64Milli({expr}) / 1000.0"

    def null_float(self) -> str:
        """A NULL of a floating-point column (ClickHouse's DOUBLE cannot hold one: a model without sessions in
        the window, so without a benchmark, failed its leaderboard there)."""
        return "CAST(NULL AS DOUBLE)" if self.name == "duckdb" else "CAST(NULL AS Nullable(Float64))"


class Engine(Protocol):
    dialect: Dialect

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...

    def tables(self) -> dict[str, str]: ...


class DuckDBEngine:
    """DuckDB in process over ``DIR/campaign=*/date=*/**/{sessions,samples,capacity}-*.parquet`` (no server)."""

    dialect = Dialect("duckdb")

    def __init__(self, results_dir: str | Path) -> None:
        import duckdb

        self.dir = Path(results_dir)
        if not self.dir.is_dir():
            raise InputError(f"{self.dir}: no results directory (run a campaign first, or give --results DIR)")
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")   # days are UTC days, as in ClickHouse (not the host's)
        self.lock = threading.Lock()
        self._views: set[str] = set()

    def _view(self, kind: str) -> str:
        """A view over the kind's Parquet files, or over an empty table of its schema when there are none yet."""
        if kind in self._views:
            return kind
        pattern = str(self.dir / "campaign=*" / "date=*" / "**" / f"{kind}-*.parquet")
        if any(self.dir.glob(f"campaign=*/date=*/**/{kind}-*.parquet")):
            self.con.execute(f"CREATE OR REPLACE VIEW {kind} AS SELECT * FROM read_parquet('{_quote(pattern)}', "
                             "union_by_name = true)")
            self._views.add(kind)
        else:
            empty = TABLES[kind].empty_table()
            self.con.register(f"{kind}_empty", empty)
            self.con.execute(f"CREATE OR REPLACE VIEW {kind} AS SELECT * FROM {kind}_empty")
        return kind

    def close(self) -> None:
        with self.lock:
            self.con.close()

    def tables(self) -> dict[str, str]:
        with self.lock, self._unreadable():
            return {kind: self._view(kind) for kind in KINDS}

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock, self._unreadable():
            for kind in KINDS:
                self._view(kind)
            cur = self.con.execute(sql, params)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    @contextlib.contextmanager
    def _unreadable(self) -> Iterator[None]:
        """DuckDB's I/O and input errors (a corrupt Parquet file, one not the fleet's) as one line; its other
        errors are our own SQL's bugs and stay what they are."""
        import duckdb

        try:
            yield
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ResultsError(f"{self.dir}: cannot read the stored results ({first[:300]})") from None


def _quote(text: str) -> str:
    return text.replace("'", "''")


class ClickHouseEngine:
    """The same queries on ClickHouse, over the tables ``fleet run`` / ``fleet results push`` fill."""

    dialect = Dialect("clickhouse")

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        cfg = sink.cfg
        self.prefix = f"{cfg.database}.{cfg.table_prefix}"

    def close(self) -> None:
        self.sink.close()

    def tables(self) -> dict[str, str]:
        return {kind: f"{self.prefix}{kind}" for kind in KINDS}

    def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.sink.query(sql, params).to_pylist()
        return rows
