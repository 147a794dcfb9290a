"""SLA-qualified capacity: how many of a workflow's slots sit on orchestrator x GPU pairs that met an SLA.

For a model and a window (``fleet.dashboard.queries.Filters``): the network's capacity at the window's end
(the last snapshot of the capacity series, ``fleet.results.capacity_series``, read within the window) and
each orchestrator's SLA score over the window from the sessions that ran on it (the leaderboard's score,
the network's formula, ``fleet.results.verdict.sla_combine``). An orchestrator's slots are

- ``qualified`` when its GPU's sessions scored at least ``sla`` (NaaP's target is 95,
  docs/metrics-and-sla-reference.md),
- ``failing`` when they scored below it,
- ``unproven`` when fewer than ``min_sessions`` of its sessions count (or its orchestrator is unknown:
  slots a NaaP or static count gives no orchestrator for) -- never passing, never failing.

An orchestrator's GPU model is the one its capacity lists when all its GPUs are one model; with several
models (``mixed``) or none listed (``unknown``) its slots cannot be split by GPU, and its sessions on every
GPU are judged together.
Regions: no capacity source names an orchestrator's region (go-livepeer's capabilities carry none), so the
slots are not split by region; the sessions' region is the tester's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleet.dashboard.engine import Engine
from fleet.dashboard.queries import WINDOWS, Filters, leaderboard
from fleet.errors import InputError

__all__ = ["MIN_SESSIONS", "SLA_TARGET", "STATUSES", "qualified_capacity"]

SLA_TARGET = 95.0    # NaaP's SLA score target
MIN_SESSIONS = 10    # counted sessions an orchestrator x GPU needs before it is judged
STATUSES = ("qualified", "failing", "unproven")
MIXED, UNKNOWN = "mixed", "unknown"   # an orchestrator whose GPUs are of several models; that lists none


def _latest(engine: Engine, f: Filters) -> list[dict[str, Any]]:
    """The rows of the last capacity snapshot of the model read within the window."""
    d, t = engine.dialect, engine.tables()["capacity"]
    clauses = [f"model = {d.param('model', 'String')}"]
    params: dict[str, Any] = {"model": f.model}
    span = WINDOWS[f.window]
    now = f.now or dt.datetime.now(dt.timezone.utc)
    clauses.append(f"read_at <= {d.param('until', 'DateTime64')}")
    params["until"] = now
    if span is not None:
        clauses.append(f"read_at >= {d.param('since', 'DateTime64')}")
        params["since"] = now - span
    cond = " AND ".join(clauses)
    return engine.query(
        f"SELECT orchestrator_uri, orchestrator_address, gpu_names, capacity, idle, "
        f"{d.epoch('read_at')} AS read_unix FROM {t} WHERE {cond} AND read_at = "
        f"(SELECT max(read_at) FROM {t} WHERE {cond}) ORDER BY orchestrator_uri", params)


def _gpu(names: list[str] | None) -> str:
    models = set(names or ())
    return models.pop() if len(models) == 1 else MIXED if models else UNKNOWN


def qualified_capacity(engine: Engine, f: Filters, sla: float = SLA_TARGET,
                       min_sessions: int = MIN_SESSIONS) -> dict[str, Any]:
    """The model's slots at the window's end by status and GPU model, with each orchestrator's evidence."""
    if f.model is None:
        raise InputError("qualified capacity is per workflow: give a model")
    snapshot = _latest(engine, f)
    unfiltered = Filters(window=f.window, model=f.model, now=f.now)   # every session on the model, any region
    by_gpu = {(r["orchestrator"], r["gpu"]): r for r in leaderboard(engine, unfiltered, by_gpu=True)[0]}
    whole = {r["orchestrator"]: r for r in leaderboard(engine, unfiltered)[0]}
    rows: list[dict[str, Any]] = []
    for c in snapshot:
        uri, gpu = c["orchestrator_uri"], _gpu(c["gpu_names"])
        split = gpu not in (MIXED, UNKNOWN)   # its slots are of one GPU model: judged on that GPU's sessions
        judged = (by_gpu.get((uri, gpu)) if split else whole.get(uri)) if uri else None
        counted = int(judged["counted"]) if judged else 0
        score = judged["score"] if judged else None
        status = ("unproven" if not uri or counted < min_sessions or score is None
                  else "qualified" if score >= sla else "failing")
        rows.append({"orchestrator": uri or None, "address": c["orchestrator_address"] or None, "gpu": gpu,
                     "slots": int(c["capacity"] or 0), "idle": int(c["idle"] or 0), "counted": counted,
                     "score": score, "status": status})
    gpus: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = gpus.setdefault(r["gpu"], {"gpu": r["gpu"], **{f"{s}_slots": 0 for s in STATUSES}, "slots": 0})
        g[f"{r['status']}_slots"] += r["slots"]
        g["slots"] += r["slots"]
    totals = {f"{s}_slots": sum(r["slots"] for r in rows if r["status"] == s) for s in STATUSES}
    return {"model": f.model, "window": f.window, "sla": sla, "min_sessions": min_sessions,
            "read_unix": snapshot[0]["read_unix"] if snapshot else None, "orchestrators": rows,
            "by_gpu": sorted(gpus.values(), key=lambda g: g["gpu"]),
            "totals": {**totals, "slots": sum(totals.values())}}
