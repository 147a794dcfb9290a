"""The pages that answer the network's planning questions: SLA-qualified capacity (now and over time, a
section of the capacity page), the graduation board, and demand gaps per region."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from fleet.dashboard import queries as q
from fleet.dashboard.engine import Engine
from fleet.dashboard.html import Section, Table, anchor, chart, link, num, page, sessions_link
from fleet.demand import DemandSpec, NaapDemandRow
from fleet.results.charts import figure, svg

SERIES_ROWS = 60   # the latest buckets tabled under the series chart (the chart draws them all)

__all__ = ["demand_page", "graduation_page", "qualified_sections", "series_page"]


def qualified_sections(engine: Engine, f: q.Filters) -> list[Section]:
    """The model's slots at the window's end by SLA status (fleet.dashboard.qualified), and over time."""
    from fleet.dashboard.qualified import MIN_SESSIONS, SLA_TARGET, qualified_capacity

    title = "SLA-qualified capacity"
    if f.model is None:
        return [Section(title, empty="Choose a model: qualified capacity is per workflow.", quiet=True)]
    got = qualified_capacity(engine, f)
    judged = q.Filters(window=f.window, model=f.model, now=f.now)   # what the counts read: any region or category
    if not got["orchestrators"]:
        return [Section(title, empty="No capacity snapshot of this model in this window.", quiet=True)]
    rows = [[anchor(link("/orchestrator", f, id=r["orchestrator"]), r["orchestrator"]) if r["orchestrator"]
             else "(no known orchestrator)", r["gpu"], str(r["slots"]), str(r["idle"]),
             sessions_link(judged, r["counted"], orchestrator=r["orchestrator"], counted="yes",
                           gpu=r["gpu"] if r["gpu"] not in ("mixed", "unknown") else None)
             if r["orchestrator"] else "0", num(r["score"]), r["status"]] for r in got["orchestrators"]]
    gpus = [[g["gpu"], str(g["qualified_slots"]), str(g["failing_slots"]), str(g["unproven_slots"]), str(g["slots"])]
            for g in got["by_gpu"]]
    note = Markup("{} {}").format(
        f"The last capacity snapshot in the window; an orchestrator's slots qualify when its GPU's sessions scored "
        f"at least {SLA_TARGET:g} (NaaP's SLA target), and are unproven with fewer than {MIN_SESSIONS} counted "
        f"sessions; every session of the model counts, whatever the region and category filters say.",
        anchor(link("/capacity/series", f), "Over time →"))
    return [Section(title, note=note, table=Table(["GPU model", "qualified slots", "failing slots", "unproven slots",
                                                   "slots"], gpus, frozenset({1, 2, 3, 4}))),
            Section(table=Table(["orchestrator", "GPU model", "slots", "idle", "counted sessions", "SLA score",
                                 "status"], rows, frozenset({2, 3, 4, 5})))]


def series_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]]) -> str:
    """SLA-qualified capacity over the window, a chart and a table per bucket."""
    from fleet.dashboard.qualified import STATUSES, qualified_series

    title = "SLA-qualified capacity over time"
    if f.model is None:
        return page(title, "/capacity/series", f, opts,
                    [Section(empty="Choose a model: qualified capacity is per workflow.", quiet=True)])
    got = qualified_series(engine, f)
    buckets = got["buckets"]

    def draw() -> str | None:
        if not buckets:
            return None
        fig, ax = figure(9, 2.8)
        t = [dt.datetime.fromtimestamp(b["t_unix"], dt.timezone.utc) for b in buckets]
        ax.stackplot(t, *[[b["totals"][f"{s}_slots"] for b in buckets] for s in STATUSES],
                     labels=list(STATUSES), colors=["#16a34a", "#dc2626", "#9ca3af"], alpha=.85, step=None)
        ax.set_ylabel("slots")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        fig.autofmt_xdate()
        return svg(fig)

    def when(b: dict[str, Any]) -> Markup | str:
        at = dt.datetime.fromtimestamp(b["t_unix"], dt.timezone.utc)
        if got["unit"] != "day":
            return num(at)
        return anchor(link("/sessions", f, day=at.date().isoformat(), counted="yes"), at.date().isoformat())

    rows = [[when(b),
             *(str(b["totals"][f"{s}_slots"]) for s in STATUSES), str(b["totals"]["slots"]),
             ", ".join(f"{g['gpu']} {g['qualified_slots']}" for g in b["by_gpu"] if g["qualified_slots"]) or "–"]
            for b in buckets]
    return page(title, "/capacity/series", f, opts, [Section(
        f"Per {got['unit']}", note=f"Each {got['unit']}: the last snapshot read in it, each orchestrator × GPU judged "
                                   f"on that {got['unit']}'s own sessions (a day links to them).",
        chart=chart(draw, "No capacity snapshot of this model in this window."),
        table=Table([got["unit"] + " (UTC)", *(f"{s} slots" for s in STATUSES), "slots", "qualified by GPU"],
                    rows[-SERIES_ROWS:], frozenset({1, 2, 3, 4})))])


def graduation_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], rules: Any, days: int) -> str:
    """Each orchestrator × GPU's graduation state for the chosen model, its changes and their evidence."""
    from fleet.dashboard.graduation import board
    from fleet.graduation import rule_for

    title = "Graduation"
    if f.model is None:
        return page(title, "/graduation", f, opts, [Section(empty="Choose a model: graduation is per workflow.",
                                                            quiet=True)], windows=("all",))
    rule = rule_for(rules, f.model)
    if rule is None:
        return page(title, "/graduation", f, opts, [Section(empty=f"No graduation rule names {f.model}.")],
                    windows=("all",))
    rows = board(engine, rules, f.model, days, f.now)

    def day_link(r: dict[str, Any], day: str) -> Markup:
        return anchor(link("/sessions", f, orchestrator=r["orchestrator"], gpu=r["gpu"], day=day, counted="yes"), day)

    table = []
    for r in rows:
        last = r["changes"][-1] if r["changes"] else None
        evidence = Markup(", ").join(day_link(r, d) for d in last["evidence"]) if last else "–"
        judged = [d for d in r["days"] if d["counted"] >= rule.graduate.min_sessions]
        good = sum(1 for d in judged if d["score"] is not None and d["score"] >= rule.graduate.min_score)
        history = "; ".join(f"{c['day']} {c['state']}" for c in r["changes"]) or "–"
        table.append([anchor(link("/orchestrator", f, id=r["orchestrator"]), r["orchestrator"]), r["gpu"], r["state"],
                      last["day"] if last else "–", evidence, f"{good} / {len(judged)}",
                      sessions_link(f, sum(d["counted"] for d in r["days"]), orchestrator=r["orchestrator"],
                                    gpu=r["gpu"], counted="yes"), history])
    note = (f"Rule for {rule.model}: graduates after {rule.graduate.days} good judged days in a row (a day is judged "
            f"with at least {rule.graduate.min_sessions} counted sessions, good at SLA score "
            f"{rule.graduate.min_score:g} or more); demoted after {rule.demote.days} bad ones. Over the last {days} "
            f"UTC days; each evidence day links to its sessions.")
    return page(title, "/graduation", f, opts, [Section(note=note, table=Table(
        ["orchestrator", "GPU", "state", "since", "evidence (days)", "good / judged days", "counted sessions",
         "history"], table, frozenset({5, 6})), empty="No sessions of this model in these days.")],
        windows=("all",))


def demand_page(engine: Engine, f: q.Filters, opts: dict[str, list[str]], demand: DemandSpec | None,
                naap_rows: Sequence[NaapDemandRow] | None, naap_failed: str | None = None) -> str:
    """Demand per region against SLA-qualified capacity (fleet.dashboard.demand)."""
    from fleet.dashboard.demand import demand_gaps

    title = "Demand gaps"
    if f.model is None:
        return page(title, "/demand", f, opts, [Section(empty="Choose a model: demand is per workflow.", quiet=True)])
    if demand is None:
        return page(title, "/demand", f, opts, [Section(
            empty="No demand declared: start the dashboard with --demand FILE (fleet schema demand).", quiet=True)])
    got = demand_gaps(engine, f, demand, naap_rows)
    rows = [[r["region"], num(r["demand_streams"]), num(r["unmet_requests"]), str(r["qualified_slots"]),
             ", ".join(f"{g} {n}" for g, n in sorted(r["qualified_by_gpu"].items())) or "–", str(r["failing_slots"]),
             str(r["unproven_slots"]), num(r["gap"]), num(r["surplus"])] for r in got["regions"]]
    source = {"naap": "NaaP's /v1/streaming/demand (each region's peak hour of streams)",
              "file": "the demand file", "none": "nowhere (the demand file names no demand for this model)"}
    note = (f"Demand: streams the workflow wants at once per region, from {source.get(got['demand_source'], '?')}; "
            "qualified: slots on orchestrator × GPU pairs that met the SLA over the window (the capacity page's rule), "
            "placed in regions by the demand file's region map. Gap: demand the qualified slots cannot serve."
            + (f" NaaP could not be read, so the file's demand is shown: {naap_failed}" if naap_failed else ""))
    return page(title, "/demand", f, opts, [Section(note=note, table=Table(
        ["region", "demand (streams)", "unmet requests (NaaP)", "qualified slots", "qualified by GPU", "failing slots",
         "unproven slots", "gap", "surplus"], rows, frozenset({1, 2, 3, 5, 6, 7, 8})),
        empty="No demand and no capacity for this model.")])


