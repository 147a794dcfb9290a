"""The dashboard's pages: HTML rendered on the server from the queries' rows.

No JavaScript at all: filters are a plain GET form (so every view is a URL that can be shared),
charts are SVG drawn by matplotlib on the server (fleet.results.charts; without the charts
extra each chart is a note saying how to get it). Every value from the data is escaped
(``_e``); numbers are formatted, never interpolated raw.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fleet.dashboard import queries as q
from fleet.dashboard.engine import Engine
from fleet.results.charts import COLORS, figure, render, svg

__all__ = ["CSS", "campaigns_page", "capacity_page", "leaderboard_page", "orchestrator_page", "workflows_page"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1200px;color:#111;
padding:0 1rem} h1{font-size:1.4rem;margin:.2rem 0} h2{font-size:1.1rem;margin-top:1.8rem;border-bottom:1px solid #ddd}
nav a{margin-right:1rem} nav{margin-bottom:.8rem} table{border-collapse:collapse;margin:.6rem 0;font-size:.92em}
td,th{padding:.25rem .55rem;border-bottom:1px solid #eee;text-align:left} th{background:#f6f6f6}
td.n{text-align:right;font-variant-numeric:tabular-nums} .note{color:#555;font-size:.9em}
form{display:flex;gap:.6rem;flex-wrap:wrap;align-items:end;margin:.6rem 0} label{display:flex;flex-direction:column;
font-size:.85em;color:#444} svg{max-width:100%;height:auto} .bad{color:#b91c1c} .good{color:#15803d}
"""
PAGES = (("/", "Leaderboard"), ("/workflows", "Workflows & prompts"), ("/capacity", "Capacity & coverage"),
         ("/campaigns", "Campaigns"))


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _n(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return _e(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _table(head: list[str], rows: Iterable[list[str]], numeric: AbstractSet[int] = frozenset()) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class=n>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _link(path: str, f: q.Filters, **extra: str) -> str:
    params = {"window": f.window, **{k: v for k, v in (("model", f.model), ("region", f.region),
                                                        ("category", f.category)) if v}, **extra}
    return _e(f"{path}?{urlencode(params)}")


def page(title: str, path: str, f: q.Filters, opts: dict[str, list[str]], body: str,
         hidden: dict[str, str] | None = None) -> str:
    nav = "".join(f"<a href='{_link(p, f)}'>{_e(name)}</a>" for p, name in PAGES)

    def select(name: str, values: list[str], current: str | None, any_label: str = "all") -> str:
        items = [f"<option value=''>{_e(any_label)}</option>"]
        items += [f"<option{' selected' if v == current else ''} value='{_e(v)}'>{_e(v)}</option>" for v in values]
        return f"<label>{_e(name)}<select name='{_e(name)}'>{''.join(items)}</select></label>"

    windows = "".join(f"<option{' selected' if w == f.window else ''} value='{w}'>{w}</option>" for w in q.WINDOWS)
    keep = "".join(f"<input type=hidden name='{_e(k)}' value='{_e(v)}'>" for k, v in (hidden or {}).items())
    form = (f"<form method=get action='{_e(path)}'>{keep}<label>window<select name=window>{windows}</select></label>"
            + select("model", opts.get("model", []), f.model) + select("region", opts.get("region", []), f.region)
            + select("category", opts.get("category", []), f.category) + "<button type=submit>apply</button></form>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>fleet · {_e(title)}</title>"
            f"<link rel=icon href='data:,'><link rel=stylesheet href='/static/dashboard.css'></head><body><nav>{nav}</nav>"
            f"<h1>{_e(title)}</h1>{form}{body}<p class=note>Sessions counted as the SLA counts them: not skipped "
            f"for capacity, not the tester's failures, not failures the network excuses. Made "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC.</p></body></html>")


def leaderboard_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], by_gpu: bool) -> str:
    rows, bench = q.leaderboard(engine, f, by_gpu)
    head = ["#", "orchestrator", *(["GPU"] if by_gpu else []), "SLA score", "startup success", "no-swap",
            "output viability", "PTFF score", "e2e score", "fps score", "failure rate", "excused rate",
            "g2g p50 ms", "g2g p90 ms", "fps p10", "fps p50", "sessions", "skipped", "last tested"]
    out = []
    for i, r in enumerate(rows, 1):
        ran = r["rows_"] - r["skipped"] - r["tester"]
        link = f"<a href='{_link('/orchestrator', f, id=r['orchestrator'])}'>{_e(r['orchestrator'])}</a>"
        out.append([str(i), link, *([_e(r["gpu"])] if by_gpu else []), _n(r["score"], 4),
                    _pct(r.get("startup_success")), _pct(r.get("no_swap_rate")), _pct(r.get("output_viability")),
                    _n(r["ptff"]), _n(r["e2e"]), _n(r["fps"]), _pct(r["failed"] / ran if ran else None),
                    _pct(r["excused_n"] / ran if ran else None), _n(r["g2g_p50"], 4), _n(r["g2g_p90"], 4),
                    _n(r["fps_p10"]), _n(r["fps_p50"]), str(r["counted"]), str(r["skipped"]), _n(r["last_tested"])])
    toggle = (f"<a href='{_link('/', f)}'>by orchestrator</a>" if by_gpu
              else f"<a href='{_link('/', f, by='gpu')}'>by orchestrator and GPU</a>")
    anchors = ", ".join(f"{k} {a:.4g} → {b:.4g}" for k, (a, b) in bench.items()) or "no sessions in the window"
    body = (f"<p class=note>Ranked by the network's SLA score, 100 · coverage · (0.7 · reliability + 0.3 · quality); "
            f"the component scores are measured against the whole network over the same window (good → bad: "
            f"{_e(anchors)}). {toggle}</p>"
            + (_table(head, out, numeric=set(range(3 if by_gpu else 2, len(head) - 1)))
               if out else "<p>No sessions in this window.</p>"))
    return page("Leaderboard", "/", f, opts, body, {"by": "gpu"} if by_gpu else None)


def _series_chart(rows: list[dict[str, Any]], band: list[dict[str, Any]], metric: str, label: str,
                  bucket_s: float) -> str | None:
    mine = [(r["t"], r[f"{metric}_p50"]) for r in rows if r.get(f"{metric}_p50") is not None]
    if not mine:
        return None
    fig, ax = figure(9, 2.8)
    bt = [dt.datetime.fromtimestamp(b["t"], dt.timezone.utc) for b in band if b.get(f"{metric}_p10") is not None]
    if bt:
        lo = [b[f"{metric}_p10"] for b in band if b.get(f"{metric}_p10") is not None]
        hi = [b[f"{metric}_p90"] for b in band if b.get(f"{metric}_p10") is not None]
        ax.fill_between(bt, lo, hi, color="#d1d5db", alpha=.7, label="network p10–p90")
    ax.plot([dt.datetime.fromtimestamp(t, dt.timezone.utc) for t, _ in mine], [v for _, v in mine], "o-",
            color=COLORS[0], ms=3, label="this orchestrator, p50")
    ax.set_ylabel(label)
    times = [t for t, _ in mine] + [b["t"] for b in band]
    pad = dt.timedelta(seconds=bucket_s)
    ax.set_xlim(dt.datetime.fromtimestamp(min(times), dt.timezone.utc) - pad,
                dt.datetime.fromtimestamp(max(times), dt.timezone.utc) + pad)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.autofmt_xdate()
    return svg(fig)


def _campaign_link(campaign_id: str) -> str:
    """A campaign's report; a monitor has none (its runs are listed on /campaigns)."""
    target = "/campaigns" if campaign_id.startswith("monitor-") else f"/campaign/{quote(campaign_id, safe='')}/report"
    return f"<a href='{_e(target)}'>{_e(campaign_id)}</a>"


def orchestrator_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], key: str) -> str:
    v = q.orchestrator_view(engine, f, key)
    parts = []
    for metric, label in (("g2g", "glass-to-glass latency p50 (ms)"), ("fps", "output fps p50")):
        chart = render(partial(_series_chart, v["series"], v["band"], metric, label, v["bucket_s"]),
                       "No sessions in this window.")
        parts.append(f"<h2>{_e(label)}</h2>" + chart)
    parts.append("<h2>GPUs</h2>" + _table(["GPU id", "GPU", "sessions", "counted", "g2g p50 ms", "fps p50"],
                                          [[_e(g["gpu_id"]), _e(g["gpu_name"]), str(g["sessions"]), str(g["counted"]),
                                            _n(g["g2g_p50"], 4), _n(g["fps_p50"])] for g in v["gpus"]], {2, 3, 4, 5}))
    parts.append("<h2>Failures by phase and error class</h2>" + (_table(
        ["phase", "error class", "sessions", "excused"],
        [[_e(r["phase"]), _e(r["error"]), str(r["n"]), str(r["excused_n"])] for r in v["failures"]], {2, 3})
        if v["failures"] else "<p>No failures in this window.</p>"))
    recent = [[_n(r["started_at"]), _campaign_link(str(r["campaign_id"])), _e(r["outcome"]),
               _e(r["error_phase"] or ""), _e(r["error_class"] or ""),
               _n(r["excused"]), _e(r["gpu_name"] or ""), _e(r["prompt_category"] or ""), _n(r["startup_s"]),
               _n(r["g2g_latency_ms"], 4), _n(r["output_fps"])] for r in v["recent"]]
    parts.append("<h2>Recent sessions</h2>" + _table(
        ["started", "campaign", "outcome", "phase", "error", "excused", "GPU", "category", "startup s", "g2g ms",
         "fps"], recent, {8, 9, 10}))
    return page(f"Orchestrator {key}", "/orchestrator", f, opts, "".join(parts), {"id": key})


def workflows_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]]) -> str:
    parts = []
    for by, title in (("model", "Per model (workflow)"), ("gpu", "Per GPU type"),
                      ("category", "Per prompt category"), ("region", "Per tester region")):
        rows = q.groups(engine, f, by)
        parts.append(f"<h2>{_e(title)}</h2>" + _table(
            [by, "sessions", "counted", "ok", "failure rate", "startup p50 s", "g2g p50 ms", "g2g p90 ms",
             "fps p10", "fps p50", "jitter mean", "ingest jitter p50 ms (gateway)"],
            [[_e(r["grp"]), str(r["rows_"]), str(r["counted"]), str(r["ok"]),
              _pct(r["failed"] / r["counted"] if r["counted"] else None), _n(r["startup_p50"]), _n(r["g2g_p50"], 4),
              _n(r["g2g_p90"], 4), _n(r["fps_p10"]), _n(r["fps_p50"]), _n(r["jitter_mean"]),
              _n(r["ingest_jitter_p50_ms"])] for r in rows],
            set(range(1, 12))))
    return page("Workflows and prompt categories", "/workflows", f, opts, "".join(parts))


def capacity_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], runs: list[dict[str, Any]]) -> str:
    now = (f.now or dt.datetime.now(dt.timezone.utc)).timestamp()
    rows = q.coverage(engine, f)
    cov = [[_e(r["orchestrator"]), str(r["tested"]), str(r["skipped"]), str(r["refused"]),
            _pct(r["refused"] / r["sent"] if r["sent"] else None), _n(r["last_refused"]), _n(r["last_tested"]),
            "never reached" if r["last_tested_unix"] is None else f"{(now - r['last_tested_unix']) / 60:.1f} min"]
           for r in rows]
    parts = ["<h2>Coverage: each orchestrator's last test</h2><p class=note>Refused while idle: the gateway said "
             "\"no orchestrators available\" for a session aimed at the orchestrator while a fresh capacity "
             "snapshot showed it idle slots (go-livepeer tries past one that refuses, errs or times out, so to "
             "one session it looks full); the share is of the sessions sent to it. Outside the SLA score.</p>"
             + (_table(["orchestrator", "sessions run", "skipped for capacity", "refused while idle",
                        "refused share", "last refused", "last tested", "age"], cov, {1, 2, 3, 4})
                if cov else "<p>No sessions in this window.</p>")]
    monitors = [r for r in runs if r.get("kind") == "monitor"]
    budget = []
    for m in monitors:
        status = (m.get("live") or {}).get("coverage") or (m.get("last_run") or {}).get("coverage") or {}
        if status:
            budget.append([_e(m.get("campaign_id")), _e(status.get("day")), _n(status.get("used_s"), 6),
                           _n(status.get("budget_s"), 6), _pct(status["used_s"] / status["budget_s"])
                           if status.get("budget_s") else "–", str(status.get("targets")),
                           _e(", ".join(status.get("overdue") or [])) or "none",
                           _e("; ".join(status.get("degraded") or [])) or "–"])
    parts.append("<h2>The monitor's budget</h2>" + (_table(
        ["monitor", "day (UTC)", "slot-s used", "daily budget", "used", "orchestrators", "overdue", "degraded"],
        budget, {2, 3, 4}) if budget else "<p class=note>No monitor has run here.</p>"))
    parts.append(_qualified(engine, f))
    slots = [r for r in runs if isinstance(r.get("capacity"), dict)]
    slots.sort(key=lambda r: str(r.get("started_at")))
    parts.append("<h2>Slots seen when each campaign started</h2>" + (_table(
        ["started", "campaign", "model", "total slots", "idle slots", "orchestrators"],
        [[_e(r.get("started_at")), _e(r.get("campaign_id")), _e(r["capacity"].get("model")),
          _n(r["capacity"].get("total_slots")), _n(r["capacity"].get("idle_slots")),
          _n(r["capacity"].get("orchestrators"))] for r in slots[-100:]], {3, 4, 5})
        if slots else "<p class=note>No campaign manifests here.</p>"))
    return page("Capacity and coverage", "/capacity", f, opts, "".join(parts))


def _qualified(engine: Engine, f: q.Filters) -> str:
    """The model's slots at the window's end by SLA status (fleet.dashboard.qualified)."""
    from fleet.dashboard.qualified import MIN_SESSIONS, SLA_TARGET, qualified_capacity

    head = "<h2>SLA-qualified capacity</h2>"
    if f.model is None:
        return head + "<p class=note>Choose a model: qualified capacity is per workflow.</p>"
    got = qualified_capacity(engine, f)
    if not got["orchestrators"]:
        return head + "<p class=note>No capacity snapshot of this model in this window.</p>"
    rows = [[f"<a href='{_link('/orchestrator', f, id=r['orchestrator'])}'>{_e(r['orchestrator'])}</a>"
             if r["orchestrator"] else "(no known orchestrator)", _e(r["gpu"]), str(r["slots"]), str(r["idle"]),
             str(r["counted"]), _n(r["score"]), _e(r["status"])] for r in got["orchestrators"]]
    gpus = [[_e(g["gpu"]), str(g["qualified_slots"]), str(g["failing_slots"]), str(g["unproven_slots"]),
             str(g["slots"])] for g in got["by_gpu"]]
    return (head + f"<p class=note>The last capacity snapshot in the window; an orchestrator's slots qualify when "
            f"its GPU's sessions scored at least {SLA_TARGET:g} (NaaP's SLA target), and are unproven with fewer "
            f"than {MIN_SESSIONS} counted sessions; every session of the model counts, whatever the region and "
            f"category filters say.</p>"
            + _table(["GPU model", "qualified slots", "failing slots", "unproven slots", "slots"], gpus, {1, 2, 3, 4})
            + _table(["orchestrator", "GPU model", "slots", "idle", "counted sessions", "SLA score", "status"], rows,
                     {2, 3, 4, 5}))


def campaigns_page(f: q.Filters, opts: dict[str, list[str]], runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in sorted(runs, key=lambda r: str(r.get("started_at")), reverse=True):
        cid = str(r.get("campaign_id", "?"))
        verdict = r.get("verdict") or {}
        live = r.get("live")
        state = ("running" if live else "monitor" if r.get("kind") == "monitor" else
                 "stopped" if r.get("stopped_by") else "done" if r.get("finished_at") else "running or killed")
        progress = ""
        if live:
            sessions = live.get("sessions") or {}
            progress = _e(", ".join(f"{k} {v}" for k, v in sorted(sessions.items())) + f"; {live.get('live_sessions', 0)} "
                          f"live; updated {live.get('updated_at', '?')}")
        report = (f"<a href='/campaign/{quote(cid, safe='')}/report'>report</a>" if r.get("_report") else "")
        rows.append([_e(cid), _e(r.get("scenario", "")), _e(r.get("started_at", "")), _e(state),
                     _n(r.get("sessions")), "–" if not verdict else ("pass" if verdict.get("passed") else "BREACH"),
                     _n((verdict.get("sla") or {}).get("score")), progress, report])
    body = _table(["campaign", "scenario", "started", "state", "sessions", "checks", "SLA score", "progress",
                   "report"], rows, {4, 6}) if rows else "<p>No campaigns here yet.</p>"
    return page("Campaigns", "/campaigns", f, opts, body)


def read_runs(results_dir: Path | None) -> list[dict[str, Any]]:
    """Every campaign's and monitor's manifest (campaign.json), with whether it has a report."""
    if results_dir is None:
        return []
    runs = []
    for path in sorted(results_dir.glob("campaign=*/campaign.json"))[-2000:]:
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            m["_report"] = (path.parent / "report.html").is_file()
            runs.append(m)
    return runs
