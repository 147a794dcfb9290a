"""The console side of a campaign: its progress bar (or log lines) and its closing summary."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fleet.results.refusals import refusals
from fleet.runtime.lifecycle import Campaign

__all__ = ["Progress", "make_summary", "print_summary"]


class Progress:
    def __init__(self, total: int, enabled: bool | None) -> None:
        self.total = total
        self.tty = sys.stdout.isatty() if enabled is None else enabled
        self.last_log = 0.0
        self.bar = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]campaign"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeElapsedColumn())
            self.task = self.bar.add_task("run", total=total, status="")
            self.bar.start()

    def update(self, done: int, live: int, counts: dict[str, int]) -> None:
        status = f"live {live} " + " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if self.bar is not None:
            self.bar.update(self.task, completed=done, status=status)
        elif time.monotonic() - self.last_log >= 5.0 or done == self.total:
            self.last_log = time.monotonic()
            print(f"fleet: {done}/{self.total} sessions done, {status}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def make_summary(c: Campaign, rows: list[dict[str, Any]], leaked: int | None) -> dict[str, Any]:
    """The campaign's summary from its stored session rows."""
    import statistics

    def med(key: str) -> float | None:
        xs = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(xs), 3) if xs else None

    outcomes: dict[str, int] = {}
    degraded: dict[str, dict[str, int]] = {}  # why sessions were degraded: reason -> GPU (or orchestrator) -> count
    for r in rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        if r["outcome"] == "degraded":
            where = r.get("gpu_name") or r.get("orchestrator_address") or "unknown GPU"
            for reason in r.get("reasons") or []:
                degraded.setdefault(reason, {}).setdefault(where, 0)
                degraded[reason][where] += 1
    return {"finished_at": dt.datetime.now(dt.timezone.utc).isoformat(), "sessions": len(rows),
            "outcomes": outcomes, "degraded_by": degraded, "startup_s_p50": med("startup_s"), "output_fps_p50": med("output_fps"),
            "g2g_latency_ms_p50": med("g2g_latency_ms"), "jitter_coeff_p50": med("jitter_coeff"),
            "stopped_by": signal.Signals(c.stop_signal).name if c.stop_signal else None, "stop_s": c.stop_s,
            "tester_bottleneck_sessions": sum(1 for r in rows if r.get("tester_bottleneck")),
            "refused_while_idle": [x.as_dict() for x in refusals(rows)],
            "broker": c.broker_state, "runner_warmup_s": c.warmup_s, "aborted": c.aborted,
            "tester_error": c.tester_error,
            "leaked_streams": leaked}


def print_summary(c: Campaign, summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    table = Table("sessions", "ok", "degraded", "failed", "skipped", "startup p50 s", "fps p50", "g2g p50 ms",
                  title=f"campaign {c.campaign_id}")
    o = summary["outcomes"]
    table.add_row(str(summary["sessions"]), str(o.get("ok", 0)), str(o.get("degraded", 0)), str(o.get("failed", 0)),
                  str(o.get("skipped_no_capacity", 0)), fmt(summary["startup_s_p50"]), fmt(summary["output_fps_p50"]),
                  fmt(summary["g2g_latency_ms_p50"]))
    console.print(table)
    if summary["tester_bottleneck_sessions"]:
        console.print(f"[yellow]{summary['tester_bottleneck_sessions']} sessions ran on a tester that was itself a bottleneck "
                      "(loop lag or CPU, or its own sending's jitter): their numbers include its own delay[/]")
    if summary["stopped_by"]:
        console.print(f"stopped by {summary['stopped_by']}: every live session ended within {summary['stop_s']} s")
    if summary["leaked_streams"]:
        console.print(f"[red]the reference gateway still lists {summary['leaked_streams']} open streams[/]")
    verdict = summary["verdict"]
    if verdict["checks"]:
        checks = Table("check", "group", "value", "wanted", "sessions", "verdict", title="SLA checks")
        for ch in verdict["checks"]:
            word = "[green]pass[/]" if ch["passed"] else "[dim]no data[/]" if ch["passed"] is None else "[red]BREACH[/]"
            checks.add_row(ch["check"], ch["group_label"], fmt(ch["value"]), f"{ch['op']} {ch['threshold']:g}",
                           str(ch["sessions"]), word)
        console.print(checks)
    console.print(f"goodput {fmt(verdict['goodput'])} · SLA score {fmt(verdict['sla'].get('score'))} "
                  f"(coverage {fmt(verdict['sla'].get('coverage'))}; benchmark: {verdict['sla'].get('benchmark')})")
    if summary.get("degraded_by"):
        why = "; ".join(f"{reason}: " + ", ".join(f"{n} on {where}" for where, n in sorted(by.items()))
                        for reason, by in sorted(summary["degraded_by"].items()))
        console.print(f"goodput counts sessions that met every threshold; degraded for {why}. The SLA score is "
                      "the network's formula (startup, swaps, fps, latency): jitter and freezes are not in it")
    print_capacity(console, summary)
    if c.aborted:
        console.print(f"[red]aborted: {c.aborted}[/]")
    if c.tester_error:
        console.print(f"[red]ended early, the tester failed: {c.tester_error}[/]")
    kafka = summary.get("kafka")
    if kafka:
        lost = kafka["undelivered"] + kafka["dropped"] + kafka["failed"]
        console.print(f"Kafka: {kafka['delivered']} of {kafka['produced']} messages delivered to {kafka['topic']}"
                      + (f" [red]({kafka['undelivered']} undelivered, {kafka['dropped']} dropped, "
                         f"{kafka['failed']} failed: {kafka['last_error']})[/]" if lost else ""))
    ch_state = summary.get("clickhouse")
    if ch_state:
        console.print(f"ClickHouse: {ch_state['rows']} rows into {ch_state['database']}.{ch_state['table_prefix']}*"
                      + (f" [red](stopped: {ch_state['error']})[/]" if ch_state["error"] else ""))
    console.print(f"results: {out}")
    if summary.get("junit"):
        console.print(f"JUnit XML: {summary['junit']}")
    if summary.get("report"):
        console.print(f"report: {summary['report']}")
    if not c.opts.json:
        return
    slim = {k: v for k, v in summary.items() if k != "verdict"}
    slim["verdict"] = {k: verdict[k] for k in ("passed", "breaches", "goodput", "sessions", "counted")}
    slim["sla_score"] = verdict["sla"].get("score")
    print(json.dumps({"campaign_id": c.campaign_id, "results": str(out), **slim}), flush=True)


def print_capacity(console: Any, summary: dict[str, Any]) -> None:
    """Orchestrators refused while advertising idle slots, and a snapshot that went stale."""
    from rich.table import Table

    if summary.get("refused_while_idle"):
        refused = Table("orchestrator", "refused", "of sessions aimed", "share", "last seen (UTC)",
                        title="refused while advertising idle capacity (outside the SLA score)")
        for x in summary["refused_while_idle"]:
            refused.add_row(x["orchestrator"], str(x["refused"]), str(x["aimed"]), f"{x['share']:.0%}",
                            dt.datetime.fromtimestamp(x["last_unix"], dt.timezone.utc).strftime("%H:%M:%S"))
        console.print(refused)
    broker = summary.get("broker") or {}
    if broker.get("capacity_stale"):
        console.print(f"[yellow]the capacity snapshot was {broker['capacity_age_s']:g} s old at the end (its source "
                      "could not be read again): the caps held against stale capacity[/]")


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"
