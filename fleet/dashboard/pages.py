"""The dashboard's pages over the stored sessions: leaderboard, orchestrator, workflows, capacity and
coverage, sessions, campaigns (fleet.dashboard.html renders them; fleet.dashboard.planning adds the
planning views: qualified capacity, graduation, demand gaps)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from fleet.dashboard import queries as q
from fleet.dashboard.engine import Engine
from fleet.dashboard.html import Section, Table, anchor, chart, link, num, page, pct, sessions_link
from fleet.dashboard.params import DEFAULT_LIMIT
from fleet.dashboard.planning import demand_page, graduation_page, qualified_sections
from fleet.results.charts import COLORS, figure, svg

__all__ = ["campaigns_page", "capacity_page", "demand_page", "graduation_page", "leaderboard_page",
           "orchestrator_page", "read_runs", "sessions_page", "workflows_page"]


def leaderboard_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], by_gpu: bool) -> str:
    rows, bench = q.leaderboard(engine, f, by_gpu)
    head = ["#", "orchestrator", *(["GPU"] if by_gpu else []), "SLA score", "startup success", "no-swap",
            "output viability", "PTFF score", "e2e score", "fps score", "failure rate", "excused rate",
            "g2g p50 ms", "g2g p90 ms", "fps p10", "fps p50", "sessions", "skipped", "last tested"]
    out = []
    for i, r in enumerate(rows, 1):
        ran = r["rows_"] - r["skipped"] - r["tester"]
        gpu = r["gpu"] if by_gpu else None
        out.append([str(i), anchor(link("/orchestrator", f, id=r["orchestrator"]), r["orchestrator"]),
                    *([r["gpu"]] if by_gpu else []), num(r["score"], 4),
                    pct(r.get("startup_success")), pct(r.get("no_swap_rate")), pct(r.get("output_viability")),
                    num(r["ptff"]), num(r["e2e"]), num(r["fps"]), pct(r["failed"] / ran if ran else None),
                    pct(r["excused_n"] / ran if ran else None), num(r["g2g_p50"], 4), num(r["g2g_p90"], 4),
                    num(r["fps_p10"]), num(r["fps_p50"]),
                    sessions_link(f, r["counted"], orchestrator=r["orchestrator"], gpu=gpu, counted="yes"),
                    sessions_link(f, r["skipped"], orchestrator=r["orchestrator"], gpu=gpu,
                                  outcome="skipped_no_capacity"), num(r["last_tested"])])
    toggle = (anchor(link("/", f), "by orchestrator") if by_gpu else anchor(link("/", f, by="gpu"), "by orchestrator and GPU"))
    anchors = ", ".join(f"{k} {a:.4g} → {b:.4g}" for k, (a, b) in bench.items()) or "no sessions in the window"
    note = Markup("{} {}").format(
        "Ranked by the network's SLA score, 100 · coverage · (0.7 · reliability + 0.3 · quality); the component "
        f"scores are measured against the whole network over the same window (good → bad: {anchors}).", toggle)
    table = Table(head, out, frozenset(range(3 if by_gpu else 2, len(head) - 1)))
    return page("Leaderboard", "/", f, opts, [Section(note=note, table=table, empty="No sessions in this window.")],
                {"by": "gpu"} if by_gpu else None)


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


def _campaign_link(campaign_id: str) -> Markup:
    """A campaign's report; a monitor has none (its runs are listed on /campaigns)."""
    target = "/campaigns" if campaign_id.startswith("monitor-") else f"/campaign/{quote(campaign_id, safe='')}/report"
    return anchor(target, campaign_id)


def orchestrator_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], key: str) -> str:
    v = q.orchestrator_view(engine, f, key)
    sections = [Section(label, chart=chart(partial(_series_chart, v["series"], v["band"], metric, label, v["bucket_s"]),
                                            "No sessions in this window."))
                for metric, label in (("g2g", "glass-to-glass latency p50 (ms)"), ("fps", "output fps p50"))]
    sections.append(Section("GPUs", table=Table(
        ["GPU id", "GPU", "sessions", "counted", "g2g p50 ms", "fps p50"],
        [[g["gpu_id"], g["gpu_name"], sessions_link(f, g["sessions"], orchestrator=key, gpu=g["gpu_name"]),
          sessions_link(f, g["counted"], orchestrator=key, gpu=g["gpu_name"], counted="yes"),
          num(g["g2g_p50"], 4), num(g["fps_p50"])] for g in v["gpus"]], frozenset({2, 3, 4, 5})),
        empty="No sessions in this window."))
    sections.append(Section("Failures by phase and error class", table=Table(
        ["phase", "error class", "sessions", "excused"],
        [[r["phase"], r["error"], sessions_link(f, r["n"], orchestrator=key, outcome="failed"), str(r["excused_n"])]
         for r in v["failures"]], frozenset({2, 3})), empty="No failures in this window."))
    recent = [_session_cells(r) for r in v["recent"]]
    sections.append(Section("Recent sessions", note=anchor(link("/sessions", f, orchestrator=key), "all its sessions"),
                            table=Table(SESSION_HEAD, recent, SESSION_NUMERIC), empty="No sessions in this window."))
    return page(f"Orchestrator {key}", "/orchestrator", f, opts, sections, {"id": key})


SESSION_HEAD = ["started", "campaign", "session", "orchestrator", "outcome", "phase", "error", "excused", "GPU",
                "category", "startup s", "g2g ms", "fps"]
SESSION_NUMERIC = frozenset({10, 11, 12})


def _session_cells(r: dict[str, Any]) -> list[Any]:
    return [num(r["started_at"]), _campaign_link(str(r["campaign_id"])), r["session_id"], r.get("orchestrator") or "",
            r["outcome"], r["error_phase"] or "", r["error_class"] or "", num(r["excused"]), r["gpu_name"] or "",
            r["prompt_category"] or "", num(r["startup_s"]), num(r["g2g_latency_ms"], 4), num(r["output_fps"])]


def sessions_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], which: dict[str, str],
                  limit: int, offset: int) -> str:
    """The sessions behind a number: the filters plus orchestrator, GPU, day, outcome and counted-only."""
    from fleet.dashboard.sessions import sessions

    rows, more = sessions(engine, f, limit=limit, offset=offset, **which)
    said = "; ".join(f"{k} {v}" for k, v in which.items()) or "every session"
    nav: list[Markup] = []
    size = None if limit == DEFAULT_LIMIT else limit   # the page's size carried to the next
    if offset:
        nav.append(anchor(link("/sessions", f, **which, limit=size, offset=max(0, offset - limit) or None), "newer"))
    if more:
        nav.append(anchor(link("/sessions", f, **which, limit=size, offset=offset + limit), "older"))
    note = Markup("{} in the window, newest first; {} from {}. {}").format(
        said, len(rows), offset + 1 if rows else 0, Markup(" · ").join(nav))
    return page("Sessions", "/sessions", f, opts,
                [Section(note=note, table=Table(SESSION_HEAD, [_session_cells(r) for r in rows], SESSION_NUMERIC),
                         empty="No such session in this window.")], which)


def _group_link(f: q.Filters, by: str, group: str, n: Any, **extra: str) -> Markup | str:
    """A group's count as a link to its sessions: a GPU is a sessions filter, the others the view's own."""
    if group == "?":   # no value stored: no filter finds these
        return num(n)
    if by == "gpu":
        return sessions_link(f, n, gpu=group, **extra)
    narrowed = replace(f, model=group) if by == "model" else replace(f, region=group) if by == "region" else \
        replace(f, category=group)
    return sessions_link(narrowed, n, **extra)


def workflows_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]]) -> str:
    sections = []
    for by, title in (("model", "Per model (workflow)"), ("gpu", "Per GPU type"),
                      ("category", "Per prompt category"), ("region", "Per tester region")):
        rows = q.groups(engine, f, by)

        sections.append(Section(title, table=Table(
            [by, "sessions", "counted", "ok", "failure rate", "startup p50 s", "g2g p50 ms", "g2g p90 ms",
             "fps p10", "fps p50", "jitter mean", "ingest jitter p50 ms (gateway)"],
            [[r["grp"], _group_link(f, by, r["grp"], r["rows_"]),
              _group_link(f, by, r["grp"], r["counted"], counted="yes"), str(r["ok"]),
              pct(r["failed"] / r["counted"] if r["counted"] else None), num(r["startup_p50"]), num(r["g2g_p50"], 4),
              num(r["g2g_p90"], 4), num(r["fps_p10"]), num(r["fps_p50"]), num(r["jitter_mean"]),
              num(r["ingest_jitter_p50_ms"])] for r in rows], frozenset(range(1, 12))),
            empty="No sessions in this window."))
    return page("Workflows and prompt categories", "/workflows", f, opts, sections)


def capacity_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], runs: list[dict[str, Any]]) -> str:
    now = (f.now or dt.datetime.now(dt.timezone.utc)).timestamp()
    rows = q.coverage(engine, f)
    cov = [[anchor(link("/orchestrator", f, id=r["orchestrator"]), r["orchestrator"]),
            sessions_link(f, r["tested"], target=r["orchestrator"], ran="yes"),
            sessions_link(f, r["skipped"], target=r["orchestrator"], outcome="skipped_no_capacity"),
            sessions_link(f, r["refused"], target=r["orchestrator"], refused="yes"),
            pct(r["refused"] / r["sent"] if r["sent"] else None), num(r["last_refused"]), num(r["last_tested"]),
            "never reached" if r["last_tested_unix"] is None else f"{(now - r['last_tested_unix']) / 60:.1f} min"]
           for r in rows]
    sections = [Section(
        "Coverage: each orchestrator's last test",
        note="Refused while idle: the gateway said \"no orchestrators available\" for a session aimed at the "
             "orchestrator while a fresh capacity snapshot showed it idle slots (go-livepeer tries past one that "
             "refuses, errs or times out, so to one session it looks full); the share is of the sessions sent to it. "
             "Outside the SLA score.",
        table=Table(["orchestrator", "sessions run", "skipped for capacity", "refused while idle", "refused share",
                     "last refused", "last tested", "age"], cov, frozenset({1, 2, 3, 4})),
        empty="No sessions in this window.")]
    budget = []
    for m in (r for r in runs if r.get("kind") == "monitor"):
        status = (m.get("live") or {}).get("coverage") or (m.get("last_run") or {}).get("coverage") or {}
        if status:
            budget.append([m.get("campaign_id"), status.get("day"), num(status.get("used_s"), 6),
                           num(status.get("budget_s"), 6),
                           pct(status["used_s"] / status["budget_s"]) if status.get("budget_s") else "–",
                           str(status.get("targets")), ", ".join(status.get("overdue") or []) or "none",
                           ", ".join(status.get("unproven") or []) or "none",
                           "; ".join(status.get("degraded") or []) or "–"])
    sections.append(Section("The monitor's budget", table=Table(
        ["monitor", "day (UTC)", "slot-s used", "daily budget", "used", "orchestrators", "overdue",
         "unproven (tested first)", "degraded"],
        budget, frozenset({2, 3, 4})), empty="No monitor has run here.", quiet=True))
    sections += qualified_sections(engine, f)
    slots = sorted((r for r in runs if isinstance(r.get("capacity"), dict)), key=lambda r: str(r.get("started_at")))
    sections.append(Section("Slots seen when each campaign started", table=Table(
        ["started", "campaign", "model", "total slots", "idle slots", "orchestrators"],
        [[r.get("started_at"), r.get("campaign_id"), r["capacity"].get("model"), num(r["capacity"].get("total_slots")),
          num(r["capacity"].get("idle_slots")), num(r["capacity"].get("orchestrators"))] for r in slots[-100:]],
        frozenset({3, 4, 5})), empty="No campaign manifests here.", quiet=True))
    return page("Capacity and coverage", "/capacity", f, opts, sections)


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
            progress = (", ".join(f"{k} {v}" for k, v in sorted(sessions.items())) + f"; {live.get('live_sessions', 0)} "
                        f"live; updated {live.get('updated_at', '?')}")
        report = anchor(f"/campaign/{quote(cid, safe='')}/report", "report") if r.get("_report") else ""
        rows.append([cid, r.get("scenario", ""), r.get("started_at", ""), state, num(r.get("sessions")),
                     "–" if not verdict else ("pass" if verdict.get("passed") else "BREACH"),
                     num((verdict.get("sla") or {}).get("score")), progress, report])
    return page("Campaigns", "/campaigns", f, opts, [Section(table=Table(
        ["campaign", "scenario", "started", "state", "sessions", "checks", "SLA score", "progress", "report"], rows,
        frozenset({4, 6})), empty="No campaigns here yet.")])


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

