"""``fleet monitor``: continuous probing of every orchestrator within a period and a daily budget.

The monitor runs the scenario's workflow the way ``fleet run`` does (the same driver, slot broker, region
runners, probe, prompt schedule and outputs: ``fleet.runtime.driver``) but its session source, instead of
a plan, is ``CoverageSource``, which asks ``fleet.coverage.Coverage`` what to test next: the least
recently tested orchestrator that is due, paced so the period is spread over the network and the daily
budget is never exceeded, with the prompt categories rotated per orchestrator (each category's prompts
drawn by ``prompts.selection``). Each session is leased a slot on that orchestrator only (``strict``),
under every cap of ``capacity:``; one with no slot is recorded as ``skipped_no_capacity`` and tried again
later.

Results flow as sessions end: to Kafka and Prometheus at once, to Parquet (``date=/hour=``
partitions of ``campaign=monitor-<scenario>``, files named by run) and ClickHouse every
``monitor.flush_s``. The state (last test per orchestrator, budget used today, categories seen
today) is rebuilt from those Parquet files at start, so a restart neither re-tests everything at
once nor forgets the budget. It runs until SIGINT / SIGTERM / ``ray job stop`` (every live session
is stopped and torn down, everything gathered is written) or, with ``--for``, until that time has
passed and its live sessions have ended. The driver keeps no rows: its memory is flat over time.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fleet.capacity import CapacitySnapshot
from fleet.coverage import ANY_ORCHESTRATOR, Coverage, Pick, Target, counts, targets_of
from fleet.errors import InputError, TesterError
from fleet.plan import prompt_schedule
from fleet.prompts import PoolEntry, PromptPicker, resolve_pool
from fleet.results.row import Identity, SessionRow
from fleet.results.outputs import Outputs
from fleet.results.refusals import refusals
from fleet.results.sink import SESSIONS, ParquetSink, conform
from fleet.runtime.broker import read_capacity
from fleet.runtime.lifecycle import (Campaign, CampaignOptions, open_gateways, open_outputs, prepare,
                                     ray_init, results_dir, with_gpu)
from fleet.runtime.dispatch import SYSTEM_CLOCK, Clock
from fleet.runtime.executor import Finished, RayExecutor
from fleet.runtime.driver import drive
from fleet.runtime.job import Job, prompt_changes
from fleet.runtime.summary import print_capacity
from fleet.scenario import load_scenario

__all__ = ["MonitorOptions", "run_monitor", "stored_rows"]

POLL_S = 0.2
REFRESH_S = 2.0      # the broker's capacity (the targets) and the Prometheus coverage gauges this often
LOG_EVERY_S = 60.0   # a status line this often
HOLD_S = 1.0         # when our own live sessions fill the concurrency cap, ask again after this
RESTORE_COLUMNS = ["target_orchestrator", "started_at", "duration_s", "outcome", "error_phase", "excused", "prompt_category"]


@dataclass
class MonitorOptions:
    address: str | None = None
    out_dir: str | None = None
    for_s: float | None = None          # stop starting sessions after this long (None: until a signal)
    seed: int = 0
    host_address: str = "127.0.0.1"
    ray_ip: str = "127.0.0.2"
    gateway_url: str | None = None
    capacity_url: str | None = None
    json: bool = False                  # also print the JSON summary as the last line


@dataclass
class _Session:
    session_id: str
    pick: Pick
    region: str
    job: Job
    started: float      # monotonic


def stored_rows(directory: Path, now: float, days: int) -> list[dict[str, Any]]:
    """The monitor's stored sessions of the last ``days`` UTC days (its state is rebuilt from them)."""
    rows: list[dict[str, Any]] = []
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    for back in range(days):
        day = today - dt.timedelta(days=back)
        for f in sorted(directory.glob(f"date={day.isoformat()}/**/sessions-*.parquet")):
            table = pq.read_table(f)
            present = [c for c in RESTORE_COLUMNS if c in table.column_names]
            for r in table.select(present).to_pylist():
                started = r.pop("started_at", None)
                r["started_unix"] = started.timestamp() if started is not None else None
                rows.append(r)
    return rows


def run_monitor(path: str, opts: MonitorOptions) -> int:
    scenario = load_scenario(path)
    spec = scenario.monitor
    if spec is None:
        raise InputError(f"{path}: no monitor: section; fleet monitor needs one, e.g. "
                         "monitor: {every_min: 60, daily_budget: 0.05, session_s: 30}")
    c = Campaign(scenario, CampaignOptions(address=opts.address, out_dir=opts.out_dir, host_address=opts.host_address,
                                           ray_ip=opts.ray_ip, gateway_url=opts.gateway_url, progress=False,
                                           capacity_url=opts.capacity_url))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{scenario.name}-{stamp}-{uuid.uuid4().hex[:4]}"
    c.campaign_id, c.run_id = f"monitor-{scenario.name}", run_id
    regions = [r.name for r in scenario.placement.regions]
    stops = prepare(c, path)
    with c.closing:   # undone on every exit path, last opened first
        open_gateways(c, path)
        c.snapshot = read_capacity(scenario, c.capacity_url, "--capacity-url" if opts.capacity_url else None)
        out = results_dir(c)
        pool = resolve_pool(scenario.prompts.sets, scenario.base_dir, scenario.source)
        categories = list(dict.fromkeys(e.prompt.category for e in pool))
        cov = Coverage(spec.every_min * 60, spec.session_s, spec.daily_budget, categories,
                       None if spec.retry_min is None else spec.retry_min * 60, spec.proven_sessions, spec.proven_days)
        outputs, sink = open_outputs(c, path, lambda: ParquetSink(out, c.campaign_id, {
            "kind": "monitor", "scenario": scenario.name, "scenario_hash": scenario.digest(), "run_id": run_id,
            "monitor": spec.model_dump(), "regions": regions, "started_at": stamp},
            hourly=True, run_tag=run_id[len(scenario.name) + 1:]), spec.flush_s)   # storage every flush_s
        now = time.time()
        restored = cov.restore(stored_rows(sink.dir, now, days=max(spec.proven_days, 1 + math.ceil(cov.every_s / 86_400))),
                               now)
        targets = targets_of(c.snapshot, scenario.capacity.include, scenario.capacity.exclude)
        status = cov.status(targets, c.snapshot.total, now)
        print(f"fleet: monitor {run_id}: {len(targets)} orchestrator(s) of {scenario.workflow.pipeline!r}, each "
              f"every {spec.every_min:g} min, budget {status['budget_s']:.0f} slot-s/day "
              f"({spec.daily_budget:.3g} of {c.snapshot.total} slots); {restored} stored session(s) read back "
              f"({status['used_s']:.0f} slot-s used today)", flush=True)
        for line in status["degraded"]:
            print(f"fleet: coverage degraded: {line}", file=sys.stderr, flush=True)
        ray_init(c, regions)
        stops.install()  # Ray's core worker installs its own fatal SIGTERM handler: ours goes back on top
        summary = _watch(c, cov, outputs, sink, pool, run_id, opts)
        closed = outputs.close()   # Kafka's deliveries, ClickHouse's rows or error
        summary["kafka"] = closed.get("kafka")
        summary["clickhouse"] = closed.get("clickhouse")
        summary["refused_while_idle"] = [x.as_dict() for x in refusals(_run_rows(sink))]
        sink.finish({"live": None, "last_run": summary})
        _print_summary(summary, sink.dir, opts.json)
        return TesterError.exit_code if c.tester_error else 0


def _watch(c: Campaign, cov: Coverage, outputs: Outputs, sink: ParquetSink, pool: list[PoolEntry], run_id: str,
           opts: MonitorOptions) -> dict[str, Any]:
    """Start the runners, drive the coverage source until it ends; the run's status for the summary."""
    assert c.snapshot is not None, "the capacity is read before the monitor starts"
    assert c.scenario.monitor is not None
    local = not (opts.address or os.environ.get("RAY_ADDRESS"))
    ex = RayExecutor(c.scenario, c.urls, c.snapshot, [opts.host_address] if local else None, c.capacity_url)
    source = CoverageSource(c, cov, ex, pool, run_id, opts)
    drive(c, ex, source, outputs, sink)
    status = source.status()
    status.update({"run_s": round(source.clock.monotonic() - source.t0, 1), "stop_s": c.stop_s, "tester_error": c.tester_error,
                   "stopped_by": signal.Signals(c.stop_signal).name if c.stop_signal else None})
    return status


class CoverageSource:
    """The monitor's sessions (``fleet.runtime.driver.Source``): refresh the targets, start what coverage
    picks on a slot leased on that orchestrator only, record a skip when it has none, gather what ends.
    Every time it reads is ``clock``'s (bench/control_plane.py runs it on a simulated one)."""

    planned: int | None = None

    def __init__(self, c: Campaign, cov: Coverage, ex: RayExecutor, pool: list[PoolEntry], run_id: str,
                 opts: MonitorOptions, clock: Clock = SYSTEM_CLOCK, log_every_s: float = LOG_EVERY_S) -> None:
        assert c.snapshot is not None and c.scenario.monitor is not None
        self.c, self.cov, self.ex, self.run_id, self.opts = c, cov, ex, run_id, opts
        self.clock, self.log_every_s = clock, log_every_s
        self.scenario, self.spec = c.scenario, c.scenario.monitor
        self.model, self.digest = self.scenario.workflow.pipeline, self.scenario.digest()
        self.prompts = {(e.set_name, e.prompt.id): e.prompt for e in pool}
        selection = self.scenario.prompts.selection
        by_category: dict[str | None, list[PoolEntry]] = {}
        for e in pool:
            by_category.setdefault(e.prompt.category, []).append(e)
        # per category, the scenario's prompts.selection (the plan's own picker), seeded per run
        self.pickers = {k: PromptPicker(v, selection, f"{opts.seed}:{k}") for k, v in by_category.items()}
        self.any_picker = PromptPicker(pool, selection, opts.seed)
        self.regions = list(c.urls)
        self.t0 = clock.monotonic()
        self.deadline = None if opts.for_s is None else self.t0 + opts.for_s
        self.snapshot: CapacitySnapshot = c.snapshot
        self.targets = targets_of(self.snapshot, self.scenario.capacity.include, self.scenario.capacity.exclude)
        self.n = 0
        self.refreshed = self.last_log = clock.monotonic()
        self.draining = False
        self.held_until = 0.0

    def begin(self) -> None:
        self.t0 = self.refreshed = self.last_log = self.clock.monotonic()   # once every runner is up
        self.deadline = None if self.opts.for_s is None else self.t0 + self.opts.for_s

    def busy(self) -> bool:
        if not self.draining and self.deadline is not None and self.clock.monotonic() >= self.deadline:
            self.draining = True
            print(f"fleet: --for {self.opts.for_s:g} s reached: no new sessions; waiting for {len(self.ex.live)} "
                  "live one(s) to end", flush=True)
        return not (self.draining and not self.ex.live)

    def step(self) -> list[SessionRow]:
        ex, mono = self.ex, self.clock.monotonic()
        rows: list[SessionRow] = []
        if mono - self.refreshed >= REFRESH_S:
            self._refresh(mono)
        if not self.draining and mono >= self.held_until:
            pick = self.cov.pick(self.targets, self.snapshot.total, self.clock.wall())
            if pick is not None:
                rows += self._start(pick, mono)
        if ex.live:
            rows += self.ended(ex.poll(POLL_S))
        else:
            self.clock.sleep(POLL_S)  # pacing: nothing live to wait on
        if self.clock.monotonic() - self.last_log >= self.log_every_s:
            self.last_log = self.clock.monotonic()
            _log(self.cov.status(self.targets, self.snapshot.total, self.clock.wall()), self.c.tally.counts,
                 len(ex.live))
        return rows

    def status(self) -> dict[str, Any]:
        return _status(self.cov, self.targets, self.snapshot, self.c.tally.counts, self.ex, self.run_id,
                       self.clock.wall())

    def _refresh(self, mono: float) -> None:
        """The broker's capacity (the targets) and the Prometheus coverage gauges."""
        self.refreshed = mono
        snapshot, self.snapshot = self.snapshot, self.ex.snapshot()
        if self.snapshot.read_unix is None or self.snapshot.read_unix != snapshot.read_unix:   # a new read
            self.targets = targets_of(self.snapshot, self.scenario.capacity.include, self.scenario.capacity.exclude,
                                      known=self.targets)
        if self.c.metrics is not None:
            self.c.metrics.coverage(self.cov.status(self.targets, self.snapshot.total, self.clock.wall()), self.model)

    def _start(self, pick: Pick, mono: float) -> list[SessionRow]:
        """Lease a slot on the picked orchestrator and start a session there, or the row of its skip."""
        now = self.clock.wall()
        region = self.regions[(self.n + 1) % len(self.regions)]
        preferred = None if pick.target.key == ANY_ORCHESTRATOR else pick.target.key
        lease = self.ex.lease(region, preferred, self.spec.session_s, strict=preferred is not None)
        if lease is None and _at_own_cap(self.ex):
            self.held_until = mono + HOLD_S  # our own live streams fill the caps: wait for one, record nothing
            return []
        self.n += 1
        session_id = f"{self.run_id}-{self.n:06d}"
        s = _Session(session_id, pick, region, self._job_for(session_id, pick, region, lease or {}), mono)
        if lease is not None:
            self.cov.started(session_id, pick, now)
            self.ex.start(region, s.job, lease["id"], s)
            return []
        self.cov.skipped(pick, now)
        return [SessionRow.skipped(self._identity(s), "no_slot_leased",
                                   f"no idle slot on {pick.target.key} within the monitor's caps",
                                   started_unix=now, orchestrator_address=pick.target.address,
                                   **self.ex.evidence(preferred))]

    def _identity(self, s: _Session) -> Identity:
        first, c = s.job.prompts[0], self.c
        return Identity(campaign_id=c.campaign_id, run_id=self.run_id, scenario=self.scenario.name,
                        scenario_hash=self.digest, model=self.model, dialect=self.scenario.target.dialect,
                        session_id=s.session_id, region=s.region, gateway=c.urls[s.region],
                        prompt_id=first.prompt_id, prompt_category=first.category,
                        planned_start_s=round(s.started - self.t0, 3),
                        target_orchestrator=None if s.pick.target.key == ANY_ORCHESTRATOR else s.pick.target.key)

    def ended(self, finished: list[Finished]) -> list[SessionRow]:
        rows = []
        for f in finished:
            s: _Session = f.tag
            if f.row is not None:
                row = replace(f.row.identified(self._identity(s)),
                              orchestrator_address=f.row.orchestrator_address or s.job.orchestrator)
            else:
                spent = round(self.clock.monotonic() - s.started, 3)
                row = SessionRow.failed(self._identity(s), *f.failure, started_unix=self.clock.wall() - spent,
                                        duration_s=spent, orchestrator_address=s.job.orchestrator)
            row = with_gpu(self.c, row)
            if row.outcome == "skipped_no_capacity":   # the gateway's skip: retried after retry_min
                self.cov.refused(s.session_id)
            self.cov.finished(s.session_id, row.duration_s or 0.0, self.clock.wall(), counts(row.record()))
            rows.append(row)
        return rows

    def _job_for(self, session_id: str, pick: Pick, region: str, lease: dict[str, Any]) -> Job:
        """The session's job: prompts of the picked category, drawn by prompts.selection, at the scenario's
        switch times (the plan's schedule, fleet.plan.prompt_schedule)."""
        seed = zlib.crc32(f"{self.opts.seed}:{session_id}".encode()) & 0x7FFFFFFF
        steps = prompt_schedule(self.scenario, self.spec.session_s, self.pickers.get(pick.category, self.any_picker))
        return Job(session_id, self.c.urls[region], self.spec.session_s,
                   prompt_changes(self.scenario, steps, self.prompts, seed)).leased(lease)


def _run_rows(sink: ParquetSink) -> list[dict[str, Any]]:
    """This run's stored sessions (its files carry its tag)."""
    files = sorted(sink.dir.glob(f"date=*/**/sessions-{sink.run_tag}-*.parquet"))
    return [r for f in files for r in conform(pq.read_table(f), SESSIONS).to_pylist()]


def _at_own_cap(ex: RayExecutor) -> bool:
    """A refusal because the monitor's own live sessions hold every slot its caps allow (not the
    orchestrator's lack of capacity: nothing to record, the next start waits for one to end)."""
    if not ex.live:
        return False
    state = ex.state_now()   # mid-run: final_state would hand back the leases held for orphan streams
    return bool(state) and state.get("leases", 0) >= state.get("budget", 0)


def _status(cov: Coverage, targets: list[Target], snapshot: Any, counts: dict[str, int], ex: RayExecutor,
            run_id: str, now: float) -> dict[str, Any]:
    return {"run_id": run_id, "updated_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
            "sessions": dict(counts), "live_sessions": len(ex.live), "coverage": cov.status(targets, snapshot.total, now),
            "tester_failures": ex.tester_failures}


def _log(status: dict[str, Any], counts: dict[str, int], live: int) -> None:
    within = status["targets"] - len(status["overdue"])
    print(f"fleet: monitor: {sum(counts.values())} sessions (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"), {live} live; {within}/{status['targets']} orchestrators tested within their period; budget "
          f"{status['used_s']:.0f} of {status['budget_s']:.0f} slot-s today", flush=True)
    for line in status["degraded"]:
        print(f"fleet: coverage degraded: {line}", file=sys.stderr, flush=True)


def _print_summary(summary: dict[str, Any], out: Path, as_json: bool) -> None:
    import json

    cov = summary["coverage"]
    _log(cov, summary["sessions"], 0)
    if cov["overdue"]:
        print(f"fleet: not tested within {cov['every_s'] / 60:g} min: {', '.join(cov['overdue'])}", flush=True)
    kafka = summary.get("kafka")
    if kafka:
        print(f"fleet: Kafka: {kafka['delivered']} of {kafka['produced']} messages delivered to {kafka['topic']}"
              + (f" ({kafka['undelivered']} undelivered, {kafka['dropped']} dropped)"
                 if kafka["undelivered"] or kafka["dropped"] else ""), flush=True)
    if summary.get("tester_error"):
        print(f"fleet: monitor ended early, the tester failed: {summary['tester_error']}", flush=True)
    if summary.get("refused_while_idle"):
        from rich.console import Console

        print_capacity(Console(width=120), summary)
    print(f"fleet: results: {out}", flush=True)
    if as_json:
        print(json.dumps({"monitor": summary["run_id"], "results": str(out), **summary}, default=str), flush=True)
