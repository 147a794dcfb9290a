"""What each dashboard view asks of the stored sessions, in SQL both engines run.

Sessions are *counted* as the SLA counts them (fleet.results.verdict.counted): not skipped for
capacity, not a tester failure, not an excused failure. The SLA score per orchestrator is the
network's formula (docs/METRICS.md) with its benchmark anchors taken from the whole network over
the same window: latencies between their p50 and p90, fps between its p50 and p10 (NaaP's
7-day bands when the window is 7 days).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fleet.dashboard.engine import Engine
from fleet.results.verdict import sla_combine

__all__ = ["WINDOWS", "Filters", "anchors", "bucket_scores", "coverage", "daily_scores", "groups", "last_snapshots",
           "leaderboard", "measured", "options", "orchestrator_view", "sla_from"]

WINDOWS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7),
           "30d": dt.timedelta(days=30), "all": None}
BUCKETS = {"1h": "minute", "24h": "hour", "7d": "hour", "30d": "day", "all": "day"}
ORCH = "coalesce(orchestrator_url, target_orchestrator, orchestrator_address, '?')"
COUNTED = ("outcome <> 'skipped_no_capacity' AND coalesce(error_phase, '') <> 'tester' "
           "AND NOT (outcome = 'failed' AND coalesce(excused, false))")
FAILED = "outcome = 'failed' AND NOT coalesce(excused, false)"
EXCUSED = "outcome = 'failed' AND coalesce(excused, false)"
SKIPPED = "outcome = 'skipped_no_capacity'"
HANDED = "outcome <> 'skipped_no_capacity' AND coalesce(error_phase, '') <> 'tester'"   # reached an orchestrator
TESTER = "coalesce(error_phase, '') = 'tester'"
OK = "outcome = 'ok'"
MIN_FPS = 12.0   # output viability: the default min_output_fps threshold of a scenario


def measured(alias: str = "") -> str:
    """1 for a capacity row read from the network (a gateway, NaaP), 0 for a scenario's static count."""
    return f"CASE WHEN {alias}source = 'static' THEN 0 ELSE 1 END"


def last_snapshots(table: str, cond: str, keys: dict[str, str]) -> str:
    """A derived table naming the last capacity snapshot per group of ``keys`` (column name -> expression) among
    the rows of ``table`` meeting ``cond``: the columns ``keys``, ``measured`` and ``last`` (its ``read_at``).
    A snapshot read from the network is taken over a later static count, which only states what a scenario
    assumed (a campaign with ``capacity.source: static`` would otherwise replace the network's slots with its
    own count); a static one only where the group has no other. Join a row ``c`` on the keys, on
    ``c.read_at = l.last`` and on ``measured('c.') = l.measured``."""
    sel = ", ".join(f"{expr} AS {name}" for name, expr in keys.items())
    group = ", ".join(keys.values())
    on = " AND ".join(f"b.{name} = r.{name}" for name in keys)
    return (f"(SELECT {', '.join('r.' + name for name in keys)}, r.measured AS measured, r.last AS last FROM "
            f"(SELECT {sel}, {measured()} AS measured, max(read_at) AS last FROM {table} WHERE {cond} "
            f"GROUP BY {group}, {measured()}) r JOIN "
            f"(SELECT {sel}, max({measured()}) AS best FROM {table} WHERE {cond} GROUP BY {group}) b "
            f"ON {on} AND r.measured = b.best)")
GROUP_COLUMNS = {"model": "model", "gpu": "coalesce(gpu_name, '?')", "category": "coalesce(prompt_category, '?')",
                 "region": "coalesce(region, '?')"}


@dataclass(frozen=True)
class Filters:
    window: str = "7d"
    model: str | None = None
    region: str | None = None
    category: str | None = None
    now: dt.datetime | None = None   # the window ends here (tests pin it); default: the current time

    def query(self, **extra: Any) -> str:
        """The filters and ``extra`` (None values left out) as a URL's query string: what a link carries."""
        given = {"window": self.window, **{k: v for k, v in (("model", self.model), ("region", self.region),
                                                              ("category", self.category)) if v}}
        return urlencode({**given, **{k: str(v) for k, v in extra.items() if v is not None}})

    def where(self, engine: Engine, extra: str = "") -> tuple[str, dict[str, Any]]:
        d = engine.dialect
        clauses, params = [], {}
        span = WINDOWS[self.window]
        if span is not None:
            now = self.now or dt.datetime.now(dt.timezone.utc)
            clauses.append(f"started_at >= {d.param('since', 'DateTime64')}")
            params["since"] = now - span
        for name, column in (("model", "model"), ("region", "region"), ("category", "prompt_category")):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{column} = {d.param(name, 'String')}")
                params[name] = value
        if extra:
            clauses.append(extra)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _rate(cond: str) -> str:
    return f"sum(CASE WHEN {cond} THEN 1 ELSE 0 END)"


def options(engine: Engine) -> dict[str, list[str]]:
    """The values the filters offer: every model, region and prompt category stored."""
    t = engine.tables()["sessions"]
    out = {}
    for name, column in (("model", "model"), ("region", "region"), ("category", "prompt_category")):
        rows = engine.query(f"SELECT DISTINCT {column} AS v FROM {t} WHERE {column} IS NOT NULL ORDER BY v LIMIT 500",
                            {})
        out[name] = [r["v"] for r in rows]
    return out


def anchors(engine: Engine, f: Filters) -> dict[str, tuple[float, float]]:
    """The network's benchmark over the window: (good, bad) per SLA component."""
    d = engine.dialect
    where, params = f.where(engine, COUNTED)
    row = engine.query(
        f"SELECT {d.quantile('startup_s', 0.5)} AS s50, {d.quantile('startup_s', 0.9)} AS s90, "
        f"{d.quantile('g2g_latency_ms', 0.5)} AS l50, {d.quantile('g2g_latency_ms', 0.9)} AS l90, "
        f"{d.quantile('output_fps', 0.5)} AS f50, {d.quantile('output_fps', 0.1)} AS f10, count(*) AS n "
        f"FROM {engine.tables()['sessions']} {where}", params)[0]
    if not row["n"]:
        return {}
    out = {}
    for key, good, bad in (("startup_s", "s50", "s90"), ("g2g_latency_ms", "l50", "l90"), ("output_fps", "f50", "f10")):
        if row[good] is not None and row[bad] is not None:
            g, b = float(row[good]), float(row[bad])
            out[key] = (g, b if b != g else g + (1e-6 if key != "output_fps" else -1e-6))
    return out


def _score(d: Any, column: str, anchor: tuple[float, float] | None, name: str, params: dict[str, Any]) -> str:
    """The mean per-session component score: 1 at or better than good, 0 at or worse than bad."""
    if anchor is None:
        return f"{d.null_float()} AS {name}"
    params[f"{name}_good"], params[f"{name}_bad"] = anchor
    good, bad = d.param(f"{name}_good", "Float64"), d.param(f"{name}_bad", "Float64")
    # greatest / least skip NULLs in DuckDB: a session without the value must stay out of the mean
    return (f"avg(CASE WHEN {column} IS NULL THEN NULL ELSE least(1.0, greatest(0.0, ({bad} - {column}) / "
            f"({bad} - {good}))) END) AS {name}")


def leaderboard(engine: Engine, f: Filters, by_gpu: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Orchestrators (or orchestrator x GPU) ranked by SLA score, with its components."""
    d = engine.dialect
    bench = anchors(engine, f)
    where, params = f.where(engine)
    keys = f"{ORCH} AS orchestrator" + (", coalesce(gpu_name, '?') AS gpu" if by_gpu else "")
    group = "1, 2" if by_gpu else "1"
    counted = f"CASE WHEN {COUNTED} THEN 1 ELSE NULL END"
    sql = (
        f"SELECT {keys}, count(*) AS rows_, {_rate(COUNTED)} AS counted, "
        f"{_rate(FAILED)} AS failed, "
        f"{_rate(EXCUSED)} AS excused_n, "
        f"{_rate(SKIPPED)} AS skipped, "
        f"{_rate(TESTER)} AS tester, "
        f"{_rate(f'{COUNTED} AND startup_s IS NOT NULL')} AS started_ok, "
        f"{_rate(f'{COUNTED} AND coalesce(swapped, false)')} AS swapped_n, "
        f"{_rate(f'{COUNTED} AND coalesce(output_fps, 0) >= {MIN_FPS}')} AS viable, "
        f"{_score(d, f'startup_s * {counted}', bench.get('startup_s'), 'ptff', params)}, "
        f"{_score(d, f'g2g_latency_ms * {counted}', bench.get('g2g_latency_ms'), 'e2e', params)}, "
        f"{_score(d, f'output_fps * {counted}', bench.get('output_fps'), 'fps', params)}, "
        f"{d.quantile('g2g_latency_ms', 0.5)} AS g2g_p50, {d.quantile('g2g_latency_ms', 0.9)} AS g2g_p90, "
        f"{d.quantile('output_fps', 0.1)} AS fps_p10, {d.quantile('output_fps', 0.5)} AS fps_p50, "
        f"{d.quantile('startup_s', 0.5)} AS startup_p50, max(started_at) AS last_tested "
        f"FROM {engine.tables()['sessions']} {where} GROUP BY {group}")
    rows = engine.query(sql, params)
    for r in rows:
        r.update(sla_from(r))
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["orchestrator"]))
    return rows, bench


def daily_scores(engine: Engine, model: str, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """Per UTC day and orchestrator x GPU, the leaderboard's score with that day's network benchmark as its
    anchors (what the leaderboard gives for each day's window), in one query: the graduation series."""
    rows = bucket_scores(engine, model, since, until, "day")
    for r in rows:
        r["day_unix"] = r.pop("t_unix")
    return rows


def bucket_scores(engine: Engine, model: str | None, since: dt.datetime | None, until: dt.datetime, unit: str,
                  by_gpu: bool = True, extras: bool = False) -> list[dict[str, Any]]:
    """Per UTC time bucket (``unit``: minute, hour or day) and orchestrator x GPU (or orchestrator, without
    ``by_gpu``), the leaderboard's score with that bucket's network benchmark as its anchors (what the
    leaderboard gives for each bucket's window), in one query over the sessions on the model started in
    [since, until) (no lower bound when ``since`` is None). With ``model`` None, every model's, each scored
    against its own benchmark, in the same one query (rows keyed by ``model`` too). Each row's ``t_unix`` is
    its bucket's start. With ``extras``, beside the score, the counted sessions' mean fps and latency
    (``fps_mean``, ``g2g_mean``), an address of the orchestrator and its GPU id when the pair's sessions saw
    only one (``n_gpu_ids``, ``one_gpu_id``), and NaaP's support counts over the sessions handed to the
    orchestrator (``HANDED``): ``requested``, ``requested_started``, ``requested_swapped``, ``effective_failed``
    (an unexcused startup failure or no output, RULE-AGGREGATE-005)."""
    if unit not in UNIT_S:
        raise ValueError(f"bucket unit {unit!r}: one of {', '.join(UNIT_S)}")
    d, t = engine.dialect, engine.tables()["sessions"]
    bucket = d.bucket_unix(unit, "started_at")
    counted = f"CASE WHEN {COUNTED} THEN 1 ELSE NULL END"

    def score(column: str, good: str, bad: str, name: str, fps: bool = False) -> str:
        bad = f"(CASE WHEN a.{bad} = a.{good} THEN a.{good} {'-' if fps else '+'} 1e-6 ELSE a.{bad} END)"
        return (f"avg(CASE WHEN {column} IS NULL THEN NULL ELSE least(1.0, greatest(0.0, ({bad} - {column}) / "
                f"({bad} - a.{good}))) END) AS {name}")

    params: dict[str, Any] = {"until": until}
    where = f"started_at < {d.param('until', 'DateTime64')}"
    if model is not None:
        where += f" AND model = {d.param('model', 'String')}"
        params["model"] = model
    else:
        where += " AND model IS NOT NULL"
    if since is not None:
        where += f" AND started_at >= {d.param('since', 'DateTime64')}"
        params["since"] = since
    keys = [f"{ORCH} AS orchestrator"] + (["coalesce(gpu_name, '?') AS gpu"] if by_gpu else []) + \
        (["s.model AS model"] if model is None else [])
    group = ", ".join(str(i) for i in range(1, len(keys) + 2))
    sql = (
        f"WITH s AS (SELECT *, {bucket} AS bucket FROM {t} WHERE {where}), "
        f"a AS (SELECT bucket, model AS a_model, {d.quantile('startup_s', 0.5)} AS s50, "
        f"{d.quantile('startup_s', 0.9)} AS s90, "
        f"{d.quantile('g2g_latency_ms', 0.5)} AS l50, {d.quantile('g2g_latency_ms', 0.9)} AS l90, "
        f"{d.quantile('output_fps', 0.5)} AS f50, {d.quantile('output_fps', 0.1)} AS f10 FROM s WHERE {COUNTED} "
        f"GROUP BY bucket, model) "
        f"SELECT s.bucket AS t_unix, {', '.join(keys)}, "
        f"count(*) AS rows_, {_rate(COUNTED)} AS counted, {_rate(TESTER)} AS tester, "
        f"{_rate(f'{COUNTED} AND startup_s IS NOT NULL')} AS started_ok, "
        f"{_rate(f'{COUNTED} AND coalesce(swapped, false)')} AS swapped_n, "
        f"{_rate(f'{COUNTED} AND coalesce(output_fps, 0) >= {MIN_FPS}')} AS viable, "
        f"{score(f'startup_s * {counted}', 's50', 's90', 'ptff')}, "
        f"{score(f'g2g_latency_ms * {counted}', 'l50', 'l90', 'e2e')}, "
        f"{score(f'output_fps * {counted}', 'f50', 'f10', 'fps', fps=True)}"
        + (_naap_counts(counted) if extras else "") +
        f" FROM s LEFT JOIN a ON s.bucket = a.bucket AND s.model = a.a_model GROUP BY {group} ORDER BY {group}")
    rows = engine.query(sql, params)
    for r in rows:
        r.update(sla_from(r))
    return rows


def _naap_counts(counted: str) -> str:
    """bucket_scores' extra columns: means, identities and NaaP's support counts (RULE-AGGREGATE-005)."""
    return (f", avg(output_fps * {counted}) AS fps_mean, avg(g2g_latency_ms * {counted}) AS g2g_mean, "
            f"max(orchestrator_address) AS address, count(DISTINCT gpu_id) AS n_gpu_ids, max(gpu_id) AS one_gpu_id, "
            f"{_rate(HANDED)} AS requested, {_rate(f'{HANDED} AND startup_s IS NOT NULL')} AS requested_started, "
            f"{_rate(f'{HANDED} AND coalesce(swapped, false)')} AS requested_swapped, "
            f"{_rate(f'{HANDED} AND NOT ({EXCUSED}) AND (startup_s IS NULL OR coalesce(output_fps, 0) = 0)')} "
            f"AS effective_failed")


def sla_from(r: dict[str, Any]) -> dict[str, Any]:
    """The SLA score and its parts from one group's counts (the network's formula)."""
    counted, eligible = r["counted"], r["rows_"] - r["tester"]
    if not counted:
        return {"score": None, "coverage": None, "reliability": None, "quality": None}
    parts = sla_combine(coverage=counted / eligible if eligible else None, startup_success=r["started_ok"] / counted,
                        no_swap_rate=1 - r["swapped_n"] / counted, output_viability=r["viable"] / counted,
                        ptff=r["ptff"], e2e=r["e2e"], fps=r["fps"])
    return {**parts, "score": round(parts["score"] or 0.0, 2)}


def orchestrator_view(engine: Engine, f: Filters, key: str) -> dict[str, Any]:
    """One orchestrator: its metrics over time beside the network's band, its GPUs, its recent sessions."""
    d = engine.dialect
    t = engine.tables()
    where, params = f.where(engine, COUNTED)
    mine = f"{ORCH} = {d.param('orch', 'String')}"
    span = engine.query(f"SELECT {d.epoch('min(started_at)')} AS a, {d.epoch('max(started_at)')} AS b "
                        f"FROM {t['sessions']} {where} AND {mine}", {**params, "orch": key})[0]
    unit = _unit((span["b"] or 0) - (span["a"] or 0), BUCKETS[f.window])
    bucket = d.bucket_unix(unit, "started_at")
    series = engine.query(
        f"SELECT {bucket} AS t, {d.quantile('g2g_latency_ms', 0.5)} AS g2g_p50, "
        f"{d.quantile('output_fps', 0.5)} AS fps_p50, {d.quantile('startup_s', 0.5)} AS startup_p50, "
        f"count(*) AS n FROM {t['sessions']} {where} AND {mine} GROUP BY 1 ORDER BY 1",
        {**params, "orch": key})
    band = engine.query(
        f"SELECT {bucket} AS t, {d.quantile('g2g_latency_ms', 0.1)} AS g2g_p10, "
        f"{d.quantile('g2g_latency_ms', 0.5)} AS g2g_p50, {d.quantile('g2g_latency_ms', 0.9)} AS g2g_p90, "
        f"{d.quantile('output_fps', 0.1)} AS fps_p10, {d.quantile('output_fps', 0.5)} AS fps_p50, "
        f"{d.quantile('output_fps', 0.9)} AS fps_p90 FROM {t['sessions']} {where} GROUP BY 1 ORDER BY 1", params)
    all_where, all_params = f.where(engine, mine)
    gpus = engine.query(
        f"SELECT coalesce(gpu_id, '?') AS gpu_id, coalesce(gpu_name, '?') AS gpu_name, count(*) AS sessions, "
        f"{_rate(COUNTED)} AS counted, {d.quantile('g2g_latency_ms', 0.5)} AS g2g_p50, "
        f"{d.quantile('output_fps', 0.5)} AS fps_p50 FROM {t['sessions']} {all_where} GROUP BY 1, 2 ORDER BY 3 DESC",
        {**all_params, "orch": key})
    recent = engine.query(
        f"SELECT started_at, campaign_id, session_id, outcome, error_phase, error_class, excused, gpu_name, "
        f"prompt_category, startup_s, g2g_latency_ms, output_fps FROM {t['sessions']} {all_where} "
        f"ORDER BY started_at DESC LIMIT 50", {**all_params, "orch": key})
    failures = engine.query(
        f"SELECT coalesce(error_phase, '?') AS phase, coalesce(error_class, '?') AS error, "
        f"{_rate('coalesce(excused, false)')} AS excused_n, count(*) AS n FROM {t['sessions']} {all_where} "
        f"AND outcome = 'failed' GROUP BY 1, 2 ORDER BY 4 DESC", {**all_params, "orch": key})
    return {"series": series, "band": band, "gpus": gpus, "recent": recent, "failures": failures,
            "bucket_s": UNIT_S[unit]}


UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def _unit(span_s: float, widest: str) -> str:
    """Buckets that give a chart some points: minutes for a few hours of data, hours for a few weeks."""
    unit = "minute" if span_s <= 6 * 3600 else "hour" if span_s <= 21 * 86400 else "day"
    return unit if UNIT_S[unit] <= UNIT_S[widest] else widest


def groups(engine: Engine, f: Filters, by: str) -> list[dict[str, Any]]:
    """The same metrics per model, GPU type, prompt category or region (graduation analytics)."""
    d = engine.dialect
    where, params = f.where(engine)
    sql = (f"SELECT {GROUP_COLUMNS[by]} AS grp, count(*) AS rows_, {_rate(COUNTED)} AS counted, "
           f"{_rate(FAILED)} AS failed, "
           f"{_rate(OK)} AS ok, "
           f"{d.quantile('startup_s', 0.5)} AS startup_p50, {d.quantile('g2g_latency_ms', 0.5)} AS g2g_p50, "
           f"{d.quantile('g2g_latency_ms', 0.9)} AS g2g_p90, {d.quantile('output_fps', 0.1)} AS fps_p10, "
           f"{d.quantile('output_fps', 0.5)} AS fps_p50, avg(jitter_coeff) AS jitter_mean, "
           f"{d.quantile('gateway_ingest_jitter_ms', 0.5)} AS ingest_jitter_p50_ms "
           f"FROM {engine.tables()['sessions']} {where} GROUP BY 1 ORDER BY 2 DESC")
    return engine.query(sql, params)


def coverage(engine: Engine, f: Filters) -> list[dict[str, Any]]:
    """Per orchestrator aimed at: when it was last tested (a session that ran), skips for capacity."""
    d = engine.dialect
    where, params = f.where(engine)
    ran = "outcome <> 'skipped_no_capacity'"
    sent = "coalesce(error_class, '') NOT IN ('no_slot_leased', 'planner_skipped')"   # the gateway saw it
    refused = "coalesce(refused_while_idle, false)"   # fleet.results.refusals: outside the SLA score
    sql = (f"SELECT coalesce(target_orchestrator, orchestrator_url, orchestrator_address, '?') AS orchestrator, "
           f"{_rate(ran)} AS tested, {_rate('NOT (' + ran + ')')} AS skipped, "
           f"{_rate(refused)} AS refused, {_rate(sent)} AS sent, "
           f"max(CASE WHEN {refused} THEN started_at ELSE NULL END) AS last_refused, "
           f"max(CASE WHEN {ran} THEN started_at ELSE NULL END) AS last_tested, "
           f"{d.epoch('max(CASE WHEN ' + ran + ' THEN started_at ELSE NULL END)')} AS last_tested_unix, "
           f"max(started_at) AS last_tried FROM {engine.tables()['sessions']} {where} GROUP BY 1 ORDER BY 8 NULLS FIRST")
    return engine.query(sql, params)
