"""Session results to Parquet as they arrive: one small file per batch, written atomically.

Layout (hive-partitioned): ``DIR/campaign=ID/date=YYYY-MM-DD/{sessions,samples,events}-NNNNN.parquet``
plus ``DIR/campaign=ID/campaign.json``. The monitor partitions by hour as well and names each file
after its run (``date=YYYY-MM-DD/hour=HH/sessions-RUN-NNNNN.parquet``), so its restarts add to one
directory without overwriting. Every file is written to a temporary
name and renamed, so a killed campaign leaves only complete files, and every
session that finished before the kill is in one of them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleet import __version__
from fleet.errors import InputError
from fleet.results.row import IDENTITY, SessionRow, arrow_fields

__all__ = ["Batch", "CAPACITY", "EVENTS", "SAMPLES", "SCHEMA_VERSION", "SESSIONS", "SESSION_FIELDS", "SUMMARIES", "TABLES", "ParquetSink",
           "conform", "find_campaign", "read_manifest", "read_sessions", "read_table", "summaries_table", "tables_of"]

# 2: gpu_id, gpu_name on every row; summaries table
# 3: the network's join keys (request_id, stream_name, pipeline_id), excused failures, the gateway's own
#    ingest track_stats, teardown_verified, codec; g2g_latency_* renamed g2g_latency_* (client-side
#    glass-to-glass, not NaaP's server-side session e2e latency)
# 4: steady-state jitter with windowed p50/p95 and the intervals it used / left out as the tester's own
#    stalls; tester_loop_busy_pct; tester_cpu_pct per session (it was since the last call, by any session)
# 5: target_orchestrator (the orchestrator the session was aimed at: the monitor's coverage key)
# 6: (issue #22) a session's life on the real network: swaps and every orchestrator that served it, the
#    capacity evidence of a skip (refused_while_idle), ICE candidate types, NaaP's startup outcome
#    (RULE-LIFECYCLE-003), jitter in milliseconds as go-livepeer reports it
# 7: tester_stall_frames (output frames the probe stamped while its own loop stalled, and since 2026-12-06
#    those its late sends made late: their share of frames_received is how much the tester excused itself)
# 8: the capacity table (every capacity snapshot a run read that changed, or one every few minutes)
# 9: tester_send_jitter_coeff (the jitter of the frames as the tester sent them: the output carries it; a
#    jitter miss it explains, over a healthy tester's 0.05, makes the session tester_bottleneck)
SCHEMA_VERSION = 9

SESSION_FIELDS = arrow_fields()           # the typed row's columns (fleet.results.row.SessionRow)
_IDS = [f for f in SESSION_FIELDS if f[0] in IDENTITY]  # the identity every table's rows carry
SESSIONS = pa.schema(SESSION_FIELDS, metadata={"fleet.schema_version": str(SCHEMA_VERSION)})
SAMPLES = pa.schema(_IDS + [("t_s", pa.float64()), ("fps_out", pa.int32()), ("fps_in", pa.int32()),
                            ("latency_ms_p50", pa.float64())])
EVENTS = pa.schema(_IDS + [("t_s", pa.float64()), ("type", pa.string()), ("data", pa.string())])
SUMMARIES = pa.schema(_IDS[:5] + [("schema_version", pa.int16()), ("region", pa.string()), ("metric", pa.string()),
                                  ("count", pa.int64()), ("relative_accuracy", pa.float64()),
                                  ("sketch", pa.binary()), ("p50", pa.float64()), ("p90", pa.float64()),
                                  ("p95", pa.float64()), ("p99", pa.float64())])
# the capacity series (fleet.results.capacity_series): one row per orchestrator of each stored snapshot
CAPACITY = pa.schema([("campaign_id", pa.string()), ("run_id", pa.string()), ("scenario", pa.string()),
                      ("fleet_version", pa.string()), ("schema_version", pa.int16()),
                      ("read_at", pa.timestamp("ms", tz="UTC")), ("age_s", pa.float64()), ("source", pa.string()),
                      ("model", pa.string()), ("orchestrator_address", pa.string()), ("orchestrator_uri", pa.string()),
                      ("gpu_ids", pa.list_(pa.string())), ("gpu_names", pa.list_(pa.string())), ("warm", pa.bool_()),
                      ("idle", pa.int32()), ("in_use", pa.int32()), ("capacity", pa.int32()),
                      ("price_per_unit", pa.int64()), ("pixels_per_unit", pa.int64())])
TABLES = {"sessions": SESSIONS, "samples": SAMPLES, "events": EVENTS, "summaries": SUMMARIES, "capacity": CAPACITY}


@dataclass(frozen=True)
class Batch:
    seq: int                          # 1, 2, ... per kind of output (stored batches: their file's number)
    rows: tuple[SessionRow, ...]
    extra: Mapping[str, pa.Table] = field(default_factory=dict)   # the run's last tables (its summaries)

    @classmethod
    def of(cls, rows: Sequence[SessionRow], seq: int = 1) -> Batch:
        return cls(seq, tuple(rows))

    @cached_property
    def tables(self) -> dict[str, pa.Table]:
        """The batch as the sessions, samples and events tables (made once, for every output that stores),
        and its extra tables."""
        return {**(tables_of(self.rows) if self.rows else {}), **self.extra}


def summaries_table(rows: Sequence[Mapping[str, Any]], ids: Mapping[str, Any]) -> pa.Table:
    """The campaign's per-region sketches (``fleet.results.sketches``) as the ``summaries`` table."""
    return pa.Table.from_pylist([{**ids, "fleet_version": __version__, "schema_version": SCHEMA_VERSION, **r}
                                 for r in rows], SUMMARIES)


class ParquetSink:
    name = "parquet"
    stored = True   # an output of fleet.results.outputs, written on the writer's thread

    def __init__(self, root: str | Path, campaign_id: str, manifest: dict[str, Any], hourly: bool = False,
                 run_tag: str | None = None) -> None:
        self.dir = Path(root) / f"campaign={campaign_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hourly = hourly
        self.run_tag = run_tag
        self.seq = 0
        self.rows = 0
        self.manifest = {**manifest, "campaign_id": campaign_id, "schema_version": SCHEMA_VERSION,
                         "fleet_version": __version__}
        self._write_json(self.dir / "campaign.json", self.manifest)

    @staticmethod
    def _write_json(path: Path, obj: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(tmp, path)

    def _partition(self) -> Path:
        now = dt.datetime.now(dt.timezone.utc)
        part = self.dir / f"date={now:%Y-%m-%d}"
        return part / f"hour={now:%H}" if self.hourly else part

    def _write(self, kind: str, table: pa.Table, part: Path) -> None:
        part.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{self.run_tag}-{self.seq:05d}" if self.run_tag else f"{kind}-{self.seq:05d}"
        path = part / f"{name}.parquet"
        tmp = part / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def add(self, batch: Batch) -> None:
        """One batch of finished sessions (a ``fleet.results.outputs.Batch``): its files are numbered by it."""
        self.seq = batch.seq
        part = self._partition()
        for kind, table in batch.tables.items():
            self._write(kind, table, part)
        self.rows += len(batch.rows)

    def write(self, rows: Sequence[SessionRow]) -> dict[str, pa.Table]:
        """One batch of rows, numbered after the last; returns its tables (for tools and tests)."""
        if not rows:
            return {}
        batch = Batch(self.seq + 1, tuple(rows))
        self.add(batch)
        return batch.tables

    def close(self) -> None:
        return None

    def finish(self, summary: dict[str, Any]) -> None:
        """The manifest with the run's summary."""
        self._write_json(self.dir / "campaign.json", {**self.manifest, **summary})

    def progress(self, status: dict[str, Any]) -> None:
        """The manifest with the run's live status (what a dashboard shows of a running monitor)."""
        self._write_json(self.dir / "campaign.json", {**self.manifest, "live": status})


def tables_of(rows: Sequence[SessionRow]) -> dict[str, pa.Table]:
    """A batch of rows as the sessions, samples and events tables."""
    stamp = {"fleet_version": __version__, "schema_version": SCHEMA_VERSION}
    sessions = [{**r.record(), **stamp} for r in rows]
    ids = [{k: s[k] for k in IDENTITY} for s in sessions]
    samples = [{**i, **s._asdict()} for i, r in zip(ids, rows) for s in r.per_second]
    events = [{**i, "t_s": e.t_s, "type": e.type, "data": json.dumps(e.data, default=str)}
              for i, r in zip(ids, rows) for e in r.events]
    return {"sessions": pa.Table.from_pylist(sessions, SESSIONS), "samples": pa.Table.from_pylist(samples, SAMPLES),
            "events": pa.Table.from_pylist(events, EVENTS)}


def read_table(campaign_dir: str | Path, kind: str) -> pa.Table:
    """One of the campaign's tables (sessions, samples, events, summaries), all its batch files."""
    schema = TABLES[kind]
    files = sorted(Path(campaign_dir).glob(f"date=*/**/{kind}-*.parquet"))  # daily, or daily/hourly
    if not files:
        return schema.empty_table()
    return pa.concat_tables([conform(pq.read_table(f), schema) for f in files])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch written by an older fleet, in the current schema: columns it lacks are nulls."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def read_sessions(campaign_dir: str | Path) -> pa.Table:
    return read_table(campaign_dir, "sessions")


def find_campaign(path: str | Path) -> Path:
    """A campaign directory, or a results directory holding exactly one."""
    d = Path(path)
    if (d / "campaign.json").exists():
        return d
    found = sorted(d.glob("campaign=*/campaign.json")) if d.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    raise InputError(f"{path}: not a campaign directory (no campaign.json"
                     + (f"; {len(found)} campaigns inside, name one" if found else "") + ")")


def read_manifest(campaign_dir: str | Path) -> dict[str, Any]:
    path = Path(campaign_dir) / "campaign.json"
    return json.loads(path.read_text()) if path.exists() else {}
