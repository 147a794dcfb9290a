"""The ClickHouse sink: the campaign's tables in ClickHouse, through clickhouse-connect.

- **DDL** (``ddl``): one MergeTree table per Arrow table (``{prefix}sessions``, ``samples``,
  ``events``, ``summaries``), column types derived from the schemas in fleet.results.sink,
  partitioned by month and ordered by ``(orchestrator_address, started_at, ...)`` so a
  per-orchestrator time range reads one contiguous range of each part.
- **Idempotent inserts**: every batch is sent with ``insert_deduplication_token`` (campaign,
  table, batch file); the tables keep a non-replicated deduplication window, so a batch
  sent twice (a retry after a lost response, or ``fleet results push`` of a campaign
  already streamed) is stored once.
- **Retries** (tenacity): an insert that failed for a reason a retry can fix (the connection, a
  timeout, or a server error ClickHouse calls transient: too many parts, memory, read-only replica,
  unknown insert status, ...; ``RETRYABLE_CODES``) is retried with exponential backoff (0.5 s, 1 s,
  2 s, 4 s). Any other error (authentication, a missing table, bad data) fails at once.
- **Credentials** come from the variables the scenario names (``url_env``, ``user_env``,
  ``password_env``); they never appear in messages, which name the variable instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from fleet.errors import ClickHouseError, InputError
from fleet.results.sink import TABLES, Batch, conform, read_manifest
from fleet.scenario import ClickHouseOut

__all__ = ["ClickHouseError", "ClickHouseFeed", "ClickHouseSink", "ddl", "push_campaign"]

log = logging.getLogger("fleet.clickhouse")

RETRIES = 4
BACKOFF_S = 0.5
# ClickHouse error codes a retry can fix (src/Common/ErrorCodes.cpp; the set ClickHouse's own Java client retries):
# UNEXPECTED_END_OF_FILE, FILE_DOESNT_EXIST, TIMEOUT_EXCEEDED, READONLY, TOO_MANY_SIMULTANEOUS_QUERIES,
# NO_FREE_CONNECTION, SOCKET_TIMEOUT, NETWORK_ERROR, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, TOO_MANY_PARTS,
# TOO_FEW_LIVE_REPLICAS, UNKNOWN_STATUS_OF_INSERT, SYSTEM_ERROR, KEEPER_EXCEPTION
RETRYABLE_CODES = frozenset({3, 107, 159, 164, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999})
_CODE = re.compile(r"Code: (\d+)")
DEDUP_WINDOW = 10_000
# table -> (ORDER BY columns, time column for partitions); key columns are never NULL (filled before insert)
LAYOUT = {
    "sessions": (("orchestrator_address", "started_at", "session_id"), "started_at"),
    "samples": (("orchestrator_address", "campaign_id", "session_id", "t_s"), None),
    "events": (("orchestrator_address", "campaign_id", "session_id", "t_s"), None),
    "summaries": (("campaign_id", "metric", "region"), None),
    "capacity": (("model", "orchestrator_uri", "read_at"), "read_at"),
}


def _ch_type(t: pa.DataType, key: bool) -> str:
    if pa.types.is_timestamp(t):
        return f"DateTime64(3, '{t.tz or 'UTC'}')"
    if pa.types.is_list(t):
        return f"Array({_ch_type(t.value_type, True)})"
    base = {pa.string(): "String", pa.binary(): "String", pa.float64(): "Float64", pa.int64(): "Int64",
            pa.int32(): "Int32", pa.int16(): "Int16", pa.bool_(): "Bool"}[t]
    return base if key else f"Nullable({base})"


def ddl(database: str, prefix: str) -> list[str]:
    """The statements that create the database and its tables (``TABLES``), and add any column a table made by an
    older schema lacks (all idempotent)."""
    out = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    for kind, schema in TABLES.items():
        order, time_col = LAYOUT[kind]
        cols = ",\n  ".join(f"`{f.name}` {_ch_type(f.type, f.name in order)}" for f in schema)
        partition = f"PARTITION BY toYYYYMM({time_col})\n" if time_col else ""
        out.append(f"CREATE TABLE IF NOT EXISTS {database}.{prefix}{kind} (\n  {cols}\n) ENGINE = MergeTree\n"
                   f"{partition}ORDER BY ({', '.join(order)})\n"
                   f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}")
        # a table an older fleet created gains the columns added since (schema changes are additive)
        for f in schema:
            if f.name not in order:
                out.append(f"ALTER TABLE {database}.{prefix}{kind} ADD COLUMN IF NOT EXISTS `{f.name}` "
                           f"{_ch_type(f.type, False)}")
    return out


def _prepare(kind: str, table: pa.Table) -> pa.Table:
    """NULL keys become '' (or 0) and NULL lists []: key and array columns are not Nullable in ClickHouse."""
    keys = LAYOUT[kind][0]
    cols = []
    for f, col in zip(table.schema, table.columns):
        if f.name in keys and col.null_count:
            col = pc.fill_null(col, "" if pa.types.is_string(f.type) else 0)
        elif pa.types.is_list(f.type) and col.null_count:
            col = pa.chunked_array([pa.array([v if v is not None else [] for v in col.to_pylist()], f.type)])
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=table.schema)


class ClickHouseSink:
    def __init__(self, cfg: ClickHouseOut, env: Mapping[str, str] | None = None, retries: int = RETRIES,
                 backoff_s: float = BACKOFF_S) -> None:
        env = os.environ if env is None else env
        logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)   # its errors reach us: we say them once
        self.cfg = cfg
        self.retries, self.backoff_s = retries, backoff_s
        url = env.get(cfg.url_env)
        if not url:
            raise InputError(f"{cfg.url_env} is not set in the environment: it holds the URL of ClickHouse's HTTP "
                             "interface, e.g. http://host:8123 (outputs.clickhouse.url_env names the variable)")
        parts = urlparse(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{cfg.url_env} must be an http(s) URL of ClickHouse's HTTP interface")
        self._secrets = [s for s in (parts.password, env.get(cfg.password_env or "")) if s]
        self.where = f"ClickHouse at ${cfg.url_env}"
        import clickhouse_connect

        try:
            self.client = clickhouse_connect.get_client(
                host=parts.hostname, port=parts.port or (8443 if parts.scheme == "https" else 8123),
                secure=parts.scheme == "https", compress=False,
                username=env.get(cfg.user_env or "") or parts.username or "default",
                password=env.get(cfg.password_env or "") or parts.password or "")
            for stmt in ddl(cfg.database, cfg.table_prefix):
                self.client.command(stmt)
        except Exception as exc:  # noqa: BLE001 - any driver error becomes one clean line
            raise ClickHouseError(f"{self.where}: {self._clean(exc)}") from None

    def _clean(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    def table(self, kind: str) -> str:
        return f"{self.cfg.database}.{self.cfg.table_prefix}{kind}"

    def insert(self, kind: str, table: pa.Table, token: str) -> int:
        """Insert one batch (retried with backoff; a repeat of ``token`` is stored once). Returns rows sent."""
        if table.num_rows == 0:
            return 0
        data = _prepare(kind, table)
        attempts = Retrying(stop=stop_after_attempt(self.retries + 1), retry=retry_if_exception(retryable),
                            wait=wait_exponential(multiplier=self.backoff_s, exp_base=2, max=60),
                            before_sleep=lambda state: self._retrying(kind, state), reraise=True)
        tried = 0
        try:
            for attempt in attempts:
                with attempt:
                    tried += 1
                    self.client.insert_arrow(self.table(kind), data, settings={"insert_deduplication_token": token})
        except Exception as exc:  # noqa: BLE001 - any driver error becomes one clean line
            raise ClickHouseError(f"{self.where}: insert into {self.table(kind)} failed after {tried} "
                                  f"attempt(s): {self._clean(exc)}") from None
        return int(table.num_rows)

    def _retrying(self, kind: str, state: RetryCallState) -> None:
        """Say, without secrets, that an insert failed and when it is tried again."""
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: insert into %s failed (%s); retrying in %.1f s", self.where, self.table(kind),
                    self._clean(exc) if exc else "unknown error", wait)

    def insert_batch(self, campaign_id: str, seq: int, tables: dict[str, pa.Table], tag: str | None = None) -> int:
        """One batch; its dedup token is its Parquet file's name (so `fleet results push` repeats it)."""
        name = f"{tag}-{seq:05d}" if tag else f"{seq:05d}"
        return sum(self.insert(kind, t, f"{campaign_id}/{kind}-{name}") for kind, t in tables.items())

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> pa.Table:
        try:
            return self.client.query_arrow(sql, parameters=parameters or {})
        except Exception as exc:  # noqa: BLE001
            raise ClickHouseError(f"{self.where}: query failed: {self._clean(exc)}") from None

    def close(self) -> None:
        self.client.close()


class ClickHouseFeed:
    """ClickHouse as an output of a run (``fleet.results.outputs``): each stored batch after its Parquet
    files, with their name as its dedup token (so ``fleet results push`` repeats it harmlessly). After a
    failure Parquet alone carries on, and ``state`` says why."""

    name = "clickhouse"
    stored = True

    def __init__(self, sink: ClickHouseSink, cfg: ClickHouseOut, campaign_id: str, tag: str | None,
                 results: Path) -> None:
        self.sink, self.campaign_id, self.tag, self.results = sink, campaign_id, tag, results
        self.state: dict[str, Any] = {"table_prefix": cfg.table_prefix, "database": cfg.database, "rows": 0,
                                      "error": None}

    def add(self, batch: Batch) -> None:
        if self.state["error"] or not batch.tables:
            return
        try:
            self.state["rows"] += self.sink.insert_batch(self.campaign_id, batch.seq, batch.tables, self.tag)
        except ClickHouseError as exc:
            self.state["error"] = str(exc)
            print(f"fleet: {exc}; results go on to Parquet only (load them later with `fleet results push "
                  f"{self.results}`)", file=sys.stderr, flush=True)

    def close(self) -> dict[str, Any]:
        self.sink.close()
        return self.state


def push_campaign(campaign_dir: str | Path, sink: ClickHouseSink) -> dict[str, int]:
    """Load an existing campaign directory: every batch file, with the token its live insert used."""
    d = Path(campaign_dir)
    manifest = read_manifest(d)
    if not manifest.get("campaign_id"):
        raise InputError(f"{d}: not a campaign directory (no campaign.json with a campaign_id)")
    counts = {kind: 0 for kind in TABLES}
    for kind, schema in TABLES.items():
        for f in sorted(d.glob(f"date=*/**/{kind}-*.parquet")):
            counts[kind] += sink.insert(kind, conform(pq.read_table(f), schema), f"{manifest['campaign_id']}/{f.stem}")
    return counts


def retryable(exc: BaseException) -> bool:
    """An error a retry can fix: the connection or a transient server condition (``RETRYABLE_CODES``)."""
    from clickhouse_connect.driver.exceptions import OperationalError

    match = _CODE.search(str(exc))
    if match:
        return int(match.group(1)) in RETRYABLE_CODES
    return isinstance(exc, (OperationalError, ConnectionError, TimeoutError))
