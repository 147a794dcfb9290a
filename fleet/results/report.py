"""``fleet report CAMPAIGN_DIR``: one self-contained HTML file (inline SVG plots, no scripts).

It reads only the campaign directory (the Parquet tables and campaign.json), so a report
can be made again at any time, on any machine, from the results alone.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fleet.results.charts import COLORS, figure, render, svg
from fleet.results.sink import read_manifest, read_table
from fleet.results.sketches import SKETCHED, Sketches, sketch_from_bytes

__all__ = ["write_report"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#111}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
.sub{color:#555} table{border-collapse:collapse;margin:.6rem 0} td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;
text-align:left} th{background:#f6f6f6} .pass{color:#15803d;font-weight:600} .fail{color:#b91c1c;font-weight:600}
.nodata{color:#777} .tiles{display:flex;gap:1rem;flex-wrap:wrap} .tile{border:1px solid #e5e5e5;border-radius:8px;
padding:.6rem 1rem;min-width:9rem} .tile b{display:block;font-size:1.35rem} svg{max-width:100%;height:auto}
.note{color:#555;font-size:.9em}
"""


def _short(addr: Any) -> str:
    s = str(addr or "?")
    return s if len(s) <= 14 else f"{s[:8]}…{s[-4:]}"


def _startup_breakdown(sessions: list[dict[str, Any]]) -> str | None:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sessions:
        if r.get("startup_s") is not None:
            groups.setdefault(_short(r.get("orchestrator_address")), []).append(r)
    if not groups:
        return None
    phases = ["signaling_ms", "ice_ms", "dtls_ms"]
    labels = sorted(groups)
    fig, ax = figure(9, 0.5 + 0.45 * len(labels))
    left = np.zeros(len(labels))
    for i, phase in enumerate([*phases, "first frame"]):
        vals = []
        for label in labels:
            rs = groups[label]
            if phase == "first frame":
                rest = [r["startup_s"] * 1000 - sum(r.get(p) or 0 for p in phases) for r in rs]
                vals.append(max(0.0, float(np.median(rest))))
            else:
                xs = [r[phase] for r in rs if r.get(phase) is not None]
                vals.append(float(np.median(xs)) if xs else 0.0)
        ax.barh(labels, vals, left=left, color=COLORS[i], label=phase.replace("_ms", ""))
        left += np.array(vals)
    ax.set_xlabel("median ms from the stream request (per orchestrator)")
    ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    return svg(fig)


def _latency_cdf(samples: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> str | None:
    by: dict[str, list[float]] = {}
    for s in samples:
        if s.get("latency_ms_p50") is not None:
            by.setdefault(_short(s.get("orchestrator_address")), []).append(s["latency_ms_p50"])
    if not by:  # no per-second samples: the sessions' medians
        for r in sessions:
            if r.get("g2g_latency_ms") is not None:
                by.setdefault(_short(r.get("orchestrator_address")), []).append(r["g2g_latency_ms"])
    if not by:
        return None
    fig, ax = figure()
    for i, (label, values) in enumerate(sorted(by.items())):
        xs = np.sort(values)
        ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=COLORS[i % len(COLORS)],
                label=f"{label} (n={len(xs)})")
    ax.set_xlabel("end-to-end latency, ms (each second's median)")
    ax.set_ylabel("share of seconds")
    ax.legend(frameon=False, fontsize=8)
    return svg(fig)


def _fps_over_time(samples: list[dict[str, Any]]) -> str | None:
    by: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        if s.get("fps_out") is not None:
            by.setdefault(s["session_id"], []).append((s["t_s"], s["fps_out"]))
    if not by:
        return None
    fig, ax = figure()
    per_t: dict[float, list[float]] = {}
    for pts in by.values():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#94a3b8", lw=0.6, alpha=0.6)
        for t, f in pts:
            per_t.setdefault(t, []).append(f)
    ts = sorted(per_t)
    ax.plot(ts, [float(np.median(per_t[t])) for t in ts], color=COLORS[0], lw=2, label="median over sessions")
    ax.set_xlabel("seconds into the session")
    ax.set_ylabel("output frames per second")
    ax.legend(frameon=False)
    return svg(fig)


def _failures(sessions: list[dict[str, Any]]) -> str | None:
    counts: dict[str, int] = {}
    for r in sessions:
        if r["outcome"] != "ok":
            why = r.get("error_class") or ", ".join(r.get("reasons") or []) or "-"
            key = f"{r['outcome']} · {r.get('error_phase') or '-'} · {why}"
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = figure(9, 0.5 + 0.35 * len(items))
    colors = [COLORS[1] if k.startswith("failed") else COLORS[4] if k.startswith("degraded") else "#94a3b8"
              for k, _ in items]
    ax.barh([k for k, _ in items], [v for _, v in items], color=colors)
    ax.set_xlabel("sessions (outcome · phase · error class or reasons)")
    return svg(fig)


def _categories(sessions: list[dict[str, Any]]) -> str | None:
    cats = sorted({str(r["prompt_category"]) for r in sessions if r.get("prompt_category")})
    if not cats:
        return None
    fig, axes = figure(9, 0.8 + 0.4 * len(cats), ncols=2)
    for ax, metric, label in ((axes[0], "g2g_latency_ms", "glass-to-glass latency, ms"), (axes[1], "output_fps", "output fps")):
        data = [[r[metric] for r in sessions if r.get("prompt_category") == c and r.get(metric) is not None]
                for c in cats]
        keep = [(c, d) for c, d in zip(cats, data) if d]
        if keep:
            ax.boxplot([d for _, d in keep], orientation="horizontal", widths=0.6)
            ax.set_yticks(range(1, len(keep) + 1), [c for c, _ in keep])
        ax.set_xlabel(label)
        ax.spines[["top", "right"]].set_visible(False)
    return svg(fig)


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_report(campaign_dir: str | Path, out: str | Path | None = None) -> Path:
    d = Path(campaign_dir)
    manifest = read_manifest(d)
    sessions = read_table(d, "sessions").to_pylist()
    samples = read_table(d, "samples").select(["session_id", "orchestrator_address", "t_s", "fps_out",
                                                "latency_ms_p50"]).to_pylist()
    verdict = manifest.get("verdict") or {}
    sk = Sketches()
    for s in read_table(d, "summaries").to_pylist():
        sk.add_sketch(s["region"], s["metric"], sketch_from_bytes(s["sketch"]))
    parts = _head(d, manifest, sessions, verdict) + _checks(verdict)
    q = sk.campaign_quantiles()
    parts.append("<h2>Distributions (merged regional sketches, ±1 % relative)</h2>")
    parts.append(_table(["metric", "values", "p50", "p90", "p95", "p99"],
                        [[m, str(q[m]["count"]), *(_fmt(q[m][p]) for p in ("p50", "p90", "p95", "p99"))]
                         for m in SKETCHED]))
    charts: tuple[tuple[str, Callable[[], str | None]], ...] = (
        ("Startup, phase by phase", lambda: _startup_breakdown(sessions)),
        ("Latency CDF per orchestrator", lambda: _latency_cdf(samples, sessions)),
        ("Output fps over time", lambda: _fps_over_time(samples)),
        ("Failure taxonomy", lambda: _failures(sessions)),
        ("Prompt categories side by side", lambda: _categories(sessions)))
    for title, draw in charts:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(render(draw, "No data for this plot."))
    parts.append(f"<p class=note>Made {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
                 f"from {html.escape(str(d))}. "
                 "Every number comes from the Parquet tables beside this file; docs/METRICS.md defines each "
                 "column.</p>")
    doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>fleet · "
           f"{html.escape(manifest.get('campaign_id', d.name))}</title><style>{CSS}</style></head><body>"
           + "\n".join(parts) + "</body></html>")
    path = Path(out) if out else d / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def _head(d: Path, manifest: dict[str, Any], sessions: list[dict[str, Any]], verdict: dict[str, Any]) -> list[str]:
    """The title, the campaign's identity and the outcome tiles."""
    outcomes: dict[str, int] = {}
    for r in sessions:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    sla = verdict.get("sla") or {}
    tiles = [("sessions", len(sessions)), ("ok", outcomes.get("ok", 0)), ("degraded", outcomes.get("degraded", 0)),
             ("failed", outcomes.get("failed", 0)), ("skipped (capacity)", outcomes.get("skipped_no_capacity", 0)),
             ("goodput", verdict.get("goodput")), ("SLA score", sla.get("score")),
             ("checks", "pass" if verdict.get("passed") else f"{verdict.get('breaches', '?')} breached"
              if verdict else "–")]
    return [f"<h1>Campaign {html.escape(manifest.get('campaign_id', d.name))}</h1>",
            f"<div class=sub>scenario <b>{html.escape(str(manifest.get('scenario', '?')))}</b> · "
            f"started {html.escape(str(manifest.get('started_at', '?')))} · regions "
            f"{html.escape(', '.join(manifest.get('regions', [])))} · "
            f"fleet {html.escape(str(manifest.get('fleet_version')))}"
            f"</div>",
            "<div class=tiles>" + "".join(f"<div class=tile>{html.escape(k)}<b>{_fmt(v)}</b></div>" for k, v in tiles)
            + "</div>"]


def _checks(verdict: dict[str, Any]) -> list[str]:
    """The scenario's checks with their verdicts, and the SLA score's components."""
    parts = ["<h2>SLA checks</h2>"]
    checks = verdict.get("checks") or []
    if checks:
        rows = []
        for c in checks:
            cls, word = ("pass", "pass") if c["passed"] else ("nodata", "no data") if c["passed"] is None \
                else ("fail", "BREACH")
            rows.append([html.escape(c["check"]), html.escape(c["group_label"]), _fmt(c["value"]),
                         f"{html.escape(c['op'])} {c['threshold']:g}", str(c["sessions"]),
                         f"<span class={cls}>{word}</span>"])
        parts.append(_table(["check", "group", "value", "wanted", "sessions", "verdict"], rows))
    else:
        parts.append("<p class=note>The scenario has no checks.</p>")
    sla = verdict.get("sla") or {}
    if sla:
        keys = ["score", "coverage", "reliability", "quality", "startup_success", "no_swap_rate",
                "output_viability", "ptff_score", "e2e_score", "fps_score", "benchmark"]
        parts.append("<p class=note>SLA score = 100 · coverage · (0.7 · reliability + 0.3 · quality), the network's "
                     "formula; see docs/METRICS.md.</p>")
        parts.append(_table(keys, [[_fmt(sla.get(k)) for k in keys]]))
    return parts

