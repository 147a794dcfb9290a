"""The queries behind the API's NaaP-shaped endpoints (``/v1/streaming/models``, ``/sla``, ``/gpu-metrics``).

NaaP (Cloud-SPE/livepeer-naap-analytics, ``api/internal/types/streaming.go``) answers these from the
network's own events; the fleet answers them from its probes: per model, the last capacity snapshot it
read; per hour and orchestrator x model x GPU model, the leaderboard's score for that hour
(``fleet.dashboard.queries.bucket_scores``) and its counts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleet.dashboard.engine import Engine
from fleet.dashboard.queries import COUNTED, WINDOWS, bucket_scores, last_snapshots, measured

__all__ = ["hourly", "models"]


def models(engine: Engine, window: str, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per model: warm orchestrators, slots and streams in its last snapshot in the window (one read from the
    network before a static count: ``last_snapshots``); mean output fps."""
    d, t = engine.dialect, engine.tables()
    now = now or dt.datetime.now(dt.timezone.utc)
    span = WINDOWS[window]
    params: dict[str, Any] = {"until": now}
    since = ""
    if span is not None:
        since, params["since"] = f" AND read_at >= {d.param('since', 'DateTime64')}", now - span
    cond = f"read_at <= {d.param('until', 'DateTime64')}{since}"
    slots = engine.query(
        f"SELECT c.model AS model, count(DISTINCT CASE WHEN c.warm AND c.orchestrator_uri <> '' THEN c.orchestrator_uri "
        f"ELSE NULL END) AS warm, "
        f"sum(c.capacity) AS slots, sum(c.in_use) AS active FROM {t['capacity']} c JOIN "
        f"{last_snapshots(t['capacity'], cond, {'model': 'model'})} l "
        f"ON c.model = l.model AND c.read_at = l.last AND {measured('c.')} = l.measured "
        f"GROUP BY c.model ORDER BY c.model", params)
    sparams: dict[str, Any] = {"until": now}
    swhere = f" AND started_at <= {d.param('until', 'DateTime64')}"
    if span is not None:
        swhere += f" AND started_at >= {d.param('since', 'DateTime64')}"
        sparams["since"] = now - span
    fps = {r["model"]: r["fps"] for r in engine.query(
        f"SELECT model, avg(output_fps) AS fps FROM {t['sessions']} WHERE {COUNTED}{swhere} GROUP BY model", sparams)}
    return [{"model": r["model"], "warm_orch_count": int(r["warm"] or 0), "gpu_slots": int(r["slots"] or 0),
             "active_streams": int(r["active"] or 0), "available_capacity": int(r["slots"] or 0) - int(r["active"] or 0),
             "avg_fps": fps.get(r["model"])} for r in slots]


def hourly(engine: Engine, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    """Per hour and orchestrator x model x GPU model in [start, end), newest hour first: the bucket scores and
    NaaP's support counts (one query)."""
    rows = bucket_scores(engine, None, start, end, "hour", extras=True)
    rows.sort(key=lambda r: (-r["t_unix"], r["orchestrator"], r["model"], r["gpu"]))   # newest hour first (NaaP)
    return rows
