"""The sessions behind a number: every count the dashboard shows links here with the filters that made it.

Beside the view's filters (``fleet.dashboard.queries.Filters``), a count names which of its sessions it
counted (``WHICH``): the orchestrator as the leaderboard keys it, the orchestrator a session was aimed at
(coverage's key), the GPU model, a UTC day, an outcome, and whether only the counted ones (the SLA's), the
ones that ran, or the ones refused while idle. Newest first, a page at a time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleet.dashboard.engine import Engine
from fleet.dashboard.queries import COUNTED, ORCH, Filters

__all__ = ["MAX_LIMIT", "OUTCOMES", "WHICH", "sessions"]

MAX_LIMIT = 1000
OUTCOMES = ("ok", "degraded", "failed", "skipped_no_capacity")
TARGET = "coalesce(target_orchestrator, orchestrator_url, orchestrator_address, '?')"
WHICH = ("orchestrator", "target", "gpu", "day", "outcome", "counted", "ran", "refused")
COLUMNS = ("started_at, campaign_id, session_id, region, model, prompt_category, outcome, error_phase, error_class, "
           "excused, gpu_name, gpu_id, orchestrator_address, startup_s, g2g_latency_ms, output_fps, swapped, "
           "refused_while_idle")


def sessions(engine: Engine, f: Filters, limit: int = 100, offset: int = 0, orchestrator: str | None = None,
             target: str | None = None, gpu: str | None = None, day: dt.date | str | None = None,
             outcome: str | None = None, counted: bool | str | None = None, ran: bool | str | None = None,
             refused: bool | str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """(a page of the sessions, newest first; whether more follow)."""
    d = engine.dialect
    extra: list[str] = []
    params: dict[str, Any] = {}
    for name, column, value in (("orch", ORCH, orchestrator), ("target", TARGET, target),
                                ("gpu", "coalesce(gpu_name, '?')", gpu), ("outcome", "outcome", outcome)):
        if value is not None:
            extra.append(f"{column} = {d.param(name, 'String')}")
            params[name] = value
    if day is not None:
        start = dt.datetime.combine(dt.date.fromisoformat(str(day)), dt.time(), dt.timezone.utc)
        extra.append(f"started_at >= {d.param('day_start', 'DateTime64')} AND "
                     f"started_at < {d.param('day_end', 'DateTime64')}")
        params.update(day_start=start, day_end=start + dt.timedelta(days=1))
    if _yes(counted):
        extra.append(COUNTED)
    if _yes(ran):
        extra.append("outcome <> 'skipped_no_capacity'")
    if _yes(refused):
        extra.append("coalesce(refused_while_idle, false)")
    where, fparams = f.where(engine, " AND ".join(extra))
    rows = engine.query(
        f"SELECT {COLUMNS}, {ORCH} AS orchestrator, {TARGET} AS target FROM {engine.tables()['sessions']} {where} "
        f"ORDER BY started_at DESC, campaign_id, session_id LIMIT {int(min(limit, MAX_LIMIT)) + 1} OFFSET {int(offset)}",
        {**fparams, **params})
    return rows[:limit], len(rows) > limit


def _yes(v: bool | str | None) -> bool:
    return v is True or v == "yes"
