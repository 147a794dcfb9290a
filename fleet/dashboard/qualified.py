"""SLA-qualified capacity: how many of a workflow's slots sit on orchestrator x GPU pairs that met an SLA.

For a model and a window (``fleet.dashboard.queries.Filters``): the network's capacity at the window's end
(the last snapshot of the capacity series, ``fleet.results.capacity_series``, read within the window; one
read from the network is taken over a later static count, which states only what a scenario assumed) and
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
Over time (``qualified_series``): per hour (windows 1h, 24h) or UTC day (7d, 30d, all) of the window, the
slots of the last snapshot read in that bucket, each orchestrator x GPU judged by the same rules on that
bucket's sessions within the window, scored against that bucket's own network benchmark (the leaderboard's
score for the bucket, ``fleet.dashboard.queries.bucket_scores``). A bucket without a snapshot is left out.
Regions: no capacity source names an orchestrator's region (go-livepeer's capabilities carry none), so the
slots are not split by region; the sessions' region is the tester's.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from fleet.dashboard.engine import Engine
from fleet.dashboard.queries import WINDOWS, Filters, bucket_scores, last_snapshots, leaderboard, measured
from fleet.errors import InputError

__all__ = ["MIN_SESSIONS", "SLA_TARGET", "STATUSES", "UNITS", "qualified_capacity", "qualified_series"]

SLA_TARGET = 95.0    # NaaP's SLA score target
MIN_SESSIONS = 10    # counted sessions an orchestrator x GPU needs before it is judged
STATUSES = ("qualified", "failing", "unproven")
MIXED, UNKNOWN = "mixed", "unknown"   # an orchestrator whose GPUs are of several models; that lists none
UNITS = {"1h": "hour", "24h": "hour", "7d": "day", "30d": "day", "all": "day"}   # the series' bucket per window


def _window(engine: Engine, f: Filters) -> tuple[str, dict[str, Any]]:
    """The capacity rows of the model read within the window: a condition and its parameters."""
    d = engine.dialect
    clauses = [f"model = {d.param('model', 'String')}", f"read_at <= {d.param('until', 'DateTime64')}"]
    params: dict[str, Any] = {"model": f.model, "until": _end(f)}
    span = WINDOWS[f.window]
    if span is not None:
        clauses.append(f"read_at >= {d.param('since', 'DateTime64')}")
        params["since"] = params["until"] - span
    return " AND ".join(clauses), params


def _end(f: Filters) -> dt.datetime:
    return f.now or dt.datetime.now(dt.timezone.utc)


def _latest(engine: Engine, f: Filters) -> list[dict[str, Any]]:
    """The rows of the last capacity snapshot of the model read within the window (``last_snapshots``: one read
    from the network before a static count)."""
    d, t = engine.dialect, engine.tables()["capacity"]
    cond, params = _window(engine, f)
    return engine.query(
        f"SELECT c.orchestrator_uri AS orchestrator_uri, c.orchestrator_address AS orchestrator_address, "
        f"c.gpu_names AS gpu_names, c.capacity AS capacity, c.idle AS idle, {d.epoch('c.read_at')} AS read_unix "
        f"FROM {t} c JOIN {last_snapshots(t, cond, {'model': 'model'})} l ON c.model = l.model "
        f"AND c.read_at = l.last AND {measured('c.')} = l.measured ORDER BY orchestrator_uri", params)


def _last_per_bucket(engine: Engine, f: Filters, unit: str) -> list[dict[str, Any]]:
    """The rows of the last capacity snapshot of the model read in each bucket of the window, in one query
    (``last_snapshots``: one read from the network before a static count)."""
    d, t = engine.dialect, engine.tables()["capacity"]
    cond, params = _window(engine, f)
    last = last_snapshots(t, cond, {"t_unix": d.bucket_unix(unit, "read_at")})
    return engine.query(
        f"SELECT l.t_unix AS t_unix, {d.epoch('c.read_at')} AS read_unix, c.orchestrator_uri AS orchestrator_uri, "
        f"c.orchestrator_address AS orchestrator_address, c.gpu_names AS gpu_names, c.capacity AS capacity, "
        f"c.idle AS idle FROM {t} c JOIN {last} l ON c.read_at = l.last AND {measured('c.')} = l.measured "
        f"WHERE c.model = {d.param('model', 'String')} "
        f"ORDER BY t_unix, orchestrator_uri", params)


def _gpu(names: list[str] | None) -> str:
    return _model_of(tuple(names or ()))


@functools.lru_cache(maxsize=4096)
def _model_of(names: tuple[str, ...]) -> str:
    """The GPU model of a list of GPU names (one per GPU): most lists repeat, across thousands of snapshot rows."""
    models = set(names)
    return models.pop() if len(models) == 1 else MIXED if models else UNKNOWN


def _judge(c: dict[str, Any], by_gpu: dict[tuple[str, str], dict[str, Any]], whole: dict[str, dict[str, Any]],
           sla: float, min_sessions: int) -> dict[str, Any]:
    """One capacity row's orchestrator, GPU model, slots and status from its scores (``by_gpu``: per
    orchestrator x GPU; ``whole``: per orchestrator, for its slots of mixed or unknown GPUs)."""
    uri, gpu = c["orchestrator_uri"], _gpu(c["gpu_names"])
    split = gpu not in (MIXED, UNKNOWN)   # its slots are of one GPU model: judged on that GPU's sessions
    judged = (by_gpu.get((uri, gpu)) if split else whole.get(uri)) if uri else None
    counted = int(judged["counted"]) if judged else 0
    score = judged["score"] if judged else None
    status = ("unproven" if not uri or counted < min_sessions or score is None
              else "qualified" if score >= sla else "failing")
    return {"orchestrator": uri or None, "gpu": gpu, "slots": int(c["capacity"] or 0), "counted": counted,
            "score": score, "status": status}


def _tally(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The slots by GPU model and status, and their totals."""
    gpus: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = gpus.setdefault(r["gpu"], {"gpu": r["gpu"], **{f"{s}_slots": 0 for s in STATUSES}, "slots": 0})
        g[f"{r['status']}_slots"] += r["slots"]
        g["slots"] += r["slots"]
    totals = {f"{s}_slots": sum(r["slots"] for r in rows if r["status"] == s) for s in STATUSES}
    return sorted(gpus.values(), key=lambda g: g["gpu"]), {**totals, "slots": sum(totals.values())}


def qualified_capacity(engine: Engine, f: Filters, sla: float = SLA_TARGET,
                       min_sessions: int = MIN_SESSIONS) -> dict[str, Any]:
    """The model's slots at the window's end by status and GPU model, with each orchestrator's evidence."""
    if f.model is None:
        raise InputError("qualified capacity is per workflow: give a model")
    snapshot = _latest(engine, f)
    unfiltered = Filters(window=f.window, model=f.model, now=f.now)   # every session on the model, any region
    by_gpu = {(r["orchestrator"], r["gpu"]): r for r in leaderboard(engine, unfiltered, by_gpu=True)[0]}
    whole = {r["orchestrator"]: r for r in leaderboard(engine, unfiltered)[0]} \
        if any(c["orchestrator_uri"] and _gpu(c["gpu_names"]) in (MIXED, UNKNOWN) for c in snapshot) else {}
    rows = []
    for c in snapshot:
        r = _judge(c, by_gpu, whole, sla, min_sessions)
        rows.append({"orchestrator": r["orchestrator"], "address": c["orchestrator_address"] or None, "gpu": r["gpu"],
                     "slots": r["slots"], "idle": int(c["idle"] or 0), "counted": r["counted"], "score": r["score"],
                     "status": r["status"]})
    gpus, totals = _tally(rows)
    return {"model": f.model, "window": f.window, "sla": sla, "min_sessions": min_sessions,
            "read_unix": snapshot[0]["read_unix"] if snapshot else None, "orchestrators": rows,
            "by_gpu": gpus, "totals": totals}


def qualified_series(engine: Engine, f: Filters, sla: float = SLA_TARGET,
                     min_sessions: int = MIN_SESSIONS) -> dict[str, Any]:
    """The model's slots over the window, per bucket: the bucket's last snapshot by status and GPU model, each
    orchestrator judged on that bucket's sessions; at most three queries whatever the number of buckets."""
    if f.model is None:
        raise InputError("qualified capacity is per workflow: give a model")
    unit = UNITS[f.window]
    snapshots = _last_per_bucket(engine, f, unit)
    until, span = _end(f), WINDOWS[f.window]
    since = until - span if span is not None else None
    # sessions started by the window's end (inclusive, as the snapshots read): one millisecond past it
    end = until + dt.timedelta(milliseconds=1)
    by_gpu: dict[float, dict[tuple[str, str], dict[str, Any]]] = {}
    whole: dict[float, dict[str, dict[str, Any]]] = {}
    if snapshots:
        for r in bucket_scores(engine, f.model, since, end, unit):
            by_gpu.setdefault(float(r["t_unix"]), {})[(r["orchestrator"], r["gpu"])] = r
    if any(c["orchestrator_uri"] and _gpu(c["gpu_names"]) in (MIXED, UNKNOWN) for c in snapshots):
        for r in bucket_scores(engine, f.model, since, end, unit, by_gpu=False):
            whole.setdefault(float(r["t_unix"]), {})[r["orchestrator"]] = r
    buckets: dict[float, dict[str, Any]] = {}
    for c in snapshots:
        at = float(c["t_unix"])
        b = buckets.setdefault(at, {"t_unix": at, "read_unix": float(c["read_unix"]), "orchestrators": []})
        b["orchestrators"].append(_judge(c, by_gpu.get(at, {}), whole.get(at, {}), sla, min_sessions))
    out = []
    for at in sorted(buckets):
        b = buckets[at]
        gpus, totals = _tally(b["orchestrators"])
        out.append({"t_unix": at, "read_unix": b["read_unix"], "by_gpu": gpus, "totals": totals,
                    "orchestrators": b["orchestrators"]})
    return {"model": f.model, "window": f.window, "unit": unit, "sla": sla, "min_sessions": min_sessions,
            "buckets": out}
