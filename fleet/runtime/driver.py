"""The one loop of ``fleet run`` and ``fleet monitor``: a session source, an executor, the outputs.

A ``Source`` says what to start and when: the campaign's plan (``fleet.runtime.campaign.PlanSource``:
sessions at their planned times, each waiting first come first served for a lease) or the monitor's
coverage rules (``fleet.runtime.monitor.CoverageSource``: the least recently tested orchestrator that is
due, within the daily budget). Each ``step`` starts what is due and returns the rows of the sessions that
ended or were skipped meanwhile; ``drive`` hands them to the run's outputs (``fleet.results.outputs``) and
to the abort checks, shows progress and the live status, and ends the loop the same way for both:

- when the source is done, a signal came (SIGINT / SIGTERM / ``ray job stop``: exit 130), an abort check
  breached, or the tester's machinery failed (``TesterError``: exit 4);
- on every one of those paths, every live session is stopped (each tears its stream down), its row is
  stored, and everything gathered is written before the summary reads it back.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Sized
from typing import Any, Protocol

from fleet.capacity import CapacitySnapshot
from fleet.errors import TesterError
from fleet.results.capacity_series import CapacitySeries
from fleet.results.outputs import Outputs
from fleet.results.row import SessionRow
from fleet.results.sink import ParquetSink
from fleet.results.verdict import AbortWatch
from fleet.runtime.executor import STOP_GRACE_S, Finished
from fleet.runtime.lifecycle import Campaign
from fleet.runtime.summary import Progress

__all__ = ["LIVE_EVERY_S", "RunExecutor", "Source", "drive"]

LIVE_EVERY_S = 5.0   # campaign.json's live status this often
STATE_EVERY_S = 2.0  # the broker's state for the Prometheus gauges this often


class Source(Protocol):
    planned: int | None   # sessions it will run (a progress bar's total); None: open-ended

    def begin(self) -> None:
        """Every runner is up: its clock starts now (the plan's times, the monitor's --for)."""

    def busy(self) -> bool: ...

    def step(self) -> list[SessionRow]: ...

    def ended(self, finished: list[Finished]) -> list[SessionRow]: ...

    def status(self) -> dict[str, Any]: ...


class RunExecutor(Protocol):
    @property
    def live(self) -> Sized: ...

    def warm(self) -> float: ...

    def capacity_reads(self, every_s: float) -> list[CapacitySnapshot]: ...

    def final_capacity_reads(self) -> list[CapacitySnapshot]: ...

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[Finished]: ...

    def broker_state(self, every_s: float) -> dict[str, Any] | None: ...

    def final_state(self) -> dict[str, Any]: ...


def drive(c: Campaign, ex: RunExecutor, source: Source, outputs: Outputs, sink: ParquetSink | None = None,
          abort: AbortWatch | None = None) -> None:
    """Run ``source`` until it is done or the run must end; every row to ``outputs``, written when it returns."""
    t0 = shown = time.monotonic()
    bar = Progress(source.planned, c.opts.progress) if source.planned is not None else None
    series = CapacitySeries(c.scenario.outputs.capacity_series,
                            {"campaign_id": c.campaign_id, "run_id": c.run_id, "scenario": c.scenario.name})

    def capacity(reads: list[CapacitySnapshot]) -> None:
        for snapshot in reads:
            table = series.offer(snapshot)
            if table is not None:
                outputs.add_table("capacity", table)

    def add(rows: list[SessionRow]) -> None:
        outputs.add(rows)
        if rows and abort is not None and abort.checks and c.aborted is None:
            breached = abort.add(rows, time.monotonic() - t0)
            if breached is not None:
                c.aborted = f"{breached.check} [{breached.group_label}] = {breached.value:g}"
                print(f"fleet: abort check breached: {c.aborted}; stopping the run", file=sys.stderr, flush=True)

    try:
        c.warmup_s = ex.warm()   # every runner started (a deadline, a TesterError naming the region), else no session
        source.begin()
        t0 = shown = time.monotonic()
        capacity([c.snapshot] if c.snapshot is not None else [])   # the first read, the driver's own
        while source.busy() and c.stop_signal is None and c.aborted is None:
            add(source.step())
            capacity(ex.capacity_reads(STATE_EVERY_S))
            if bar is not None:
                bar.update(c.tally.done, len(ex.live), c.tally.counts)
            if sink is not None and time.monotonic() - shown >= LIVE_EVERY_S:  # for dashboards
                shown = time.monotonic()
                sink.progress({"updated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                               "sessions": dict(c.tally.counts), "done": c.tally.done,
                               "live_sessions": len(ex.live), **source.status()})
            if c.metrics is not None:  # the broker's leases against its budget, asked without waiting
                state = ex.broker_state(STATE_EVERY_S)
                if state is not None:
                    c.metrics.broker(state)
    except TesterError as exc:  # the broker or Ray lost, a runner not started: end here, exit 4
        c.tester_error = str(exc)
        print(f"fleet: {exc}; ending the run (every live session is stopped)", file=sys.stderr, flush=True)
    finally:
        try:
            if len(ex.live):
                add(source.ended(ex.stop_all(STOP_GRACE_S)))
                if c.stop_at is not None:
                    c.stop_s = round(time.monotonic() - c.stop_at, 3)
        finally:
            if bar is not None:
                bar.close()
            capacity(ex.final_capacity_reads())   # the reads since the last poll
            outputs.drain()  # every row on disk before the summary
            c.broker_state = ex.final_state()
