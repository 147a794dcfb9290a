"""Session results to Parquet as they arrive: one small file per batch, written atomically.

Layout (hive-partitioned): ``DIR/campaign=ID/date=YYYY-MM-DD/{sessions,samples,events}-NNNNN.parquet``
plus ``DIR/campaign=ID/campaign.json``. Every file is written to a temporary
name and renamed, so a killed campaign leaves only complete files, and every
session that finished before the kill is in one of them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleet import __version__

__all__ = ["SCHEMA_VERSION", "ParquetSink", "SESSION_FIELDS", "read_sessions"]

SCHEMA_VERSION = 1

# the identity every row carries
_IDS = [("campaign_id", pa.string()), ("run_id", pa.string()), ("scenario", pa.string()),
        ("scenario_hash", pa.string()), ("fleet_version", pa.string()), ("schema_version", pa.int16()),
        ("session_id", pa.string()), ("region", pa.string()), ("gateway", pa.string()),
        ("orchestrator_address", pa.string()), ("orchestrator_url", pa.string()), ("model", pa.string()),
        ("prompt_id", pa.string()), ("prompt_category", pa.string())]

SESSION_FIELDS = _IDS + [
    ("dialect", pa.string()), ("stream_id", pa.string()), ("planned_start_s", pa.float64()),
    ("started_at", pa.timestamp("ms", tz="UTC")), ("duration_s", pa.float64()),
    ("outcome", pa.string()), ("error_phase", pa.string()), ("error_class", pa.string()),
    ("error_detail", pa.string()), ("reasons", pa.list_(pa.string())),
    ("offer_ms", pa.float64()), ("signaling_ms", pa.float64()), ("ice_ms", pa.float64()), ("dtls_ms", pa.float64()),
    ("first_packet_ms", pa.float64()), ("whep_signaling_ms", pa.float64()), ("startup_s", pa.float64()),
    ("playable_s", pa.float64()), ("frames_sent", pa.int64()), ("frames_received", pa.int64()),
    ("output_fps", pa.float64()), ("jitter_coeff", pa.float64()), ("freeze_count", pa.int64()),
    ("freeze_s", pa.float64()), ("black_frames", pa.int64()), ("decoded_frames", pa.int64()),
    ("latency_method", pa.string()), ("e2e_latency_ms", pa.float64()), ("e2e_latency_p95_ms", pa.float64()),
    ("latency_sample_count", pa.int64()), ("prompt_switch_ms", pa.list_(pa.float64())),
    ("packets_received", pa.int64()), ("packet_loss_pct", pa.float64()), ("ingest_packet_loss_pct", pa.float64()),
    ("rtt_ms", pa.float64()), ("pacing_late_ms_mean", pa.float64()), ("pacing_late_ms_max", pa.float64()),
    ("gateway_state", pa.string()), ("restart_count", pa.int64()), ("swapped", pa.bool_()),
    ("tester_host", pa.string()), ("tester_loop_lag_ms_max", pa.float64()),
    ("tester_loop_lag_ms_mean", pa.float64()), ("tester_cpu_pct", pa.float64()),
    ("tester_bottleneck", pa.bool_()),
]
SESSIONS = pa.schema(SESSION_FIELDS, metadata={"fleet.schema_version": str(SCHEMA_VERSION)})
SAMPLES = pa.schema(_IDS + [("t_s", pa.float64()), ("fps_out", pa.int32()), ("fps_in", pa.int32()),
                            ("latency_ms_p50", pa.float64())])
EVENTS = pa.schema(_IDS + [("t_s", pa.float64()), ("type", pa.string()), ("data", pa.string())])


class ParquetSink:
    def __init__(self, root: str | Path, campaign_id: str, manifest: dict[str, Any]) -> None:
        self.dir = Path(root) / f"campaign={campaign_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
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

    def _write(self, kind: str, table: pa.Table, day: str) -> None:
        part = self.dir / f"date={day}"
        part.mkdir(exist_ok=True)
        path = part / f"{kind}-{self.seq:05d}.parquet"
        tmp = part / f".{kind}-{self.seq:05d}.parquet.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """One batch of finished sessions (rows as the runner returns them, ids filled in)."""
        if not rows:
            return
        self.seq += 1
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        ids = [{k: r.get(k) for k, _ in _IDS} for r in rows]
        sessions = []
        for r in rows:
            row = {k: r.get(k) for k, _ in SESSION_FIELDS}
            row["started_at"] = dt.datetime.fromtimestamp(r.get("started_unix") or 0, dt.timezone.utc)
            row["latency_sample_count"] = len(r.get("latency_samples") or [])
            sessions.append(row)
        samples = [{**i, **s} for i, r in zip(ids, rows) for s in r.get("per_second") or []]
        events = [{**i, "t_s": t, "type": kind, "data": json.dumps(data, default=str)}
                  for i, r in zip(ids, rows) for t, kind, data in r.get("events") or []]
        self._write("sessions", pa.Table.from_pylist(sessions, SESSIONS), day)
        self._write("samples", pa.Table.from_pylist(samples, SAMPLES), day)
        self._write("events", pa.Table.from_pylist(events, EVENTS), day)
        self.rows += len(rows)

    def close(self, summary: dict[str, Any]) -> None:
        self._write_json(self.dir / "campaign.json", {**self.manifest, **summary})


def read_sessions(campaign_dir: str | Path) -> pa.Table:
    files = sorted(Path(campaign_dir).glob("date=*/sessions-*.parquet"))
    if not files:
        return SESSIONS.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SESSIONS) for f in files])
