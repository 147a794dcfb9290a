"""``fleet run``: a campaign on Ray, locally or as a Ray job.

With a cluster address (``--address``, or ``RAY_ADDRESS`` as ``ray job submit``
sets it) the campaign joins that cluster; without one it starts a private
Ray bound to loopback and, for a ``reference`` target with no URL, the
reference gateway, and shuts both down at the end.

The driver plans the campaign, then follows the plan in real time: a due
session asks the broker actor for a lease, waiting first come first served
up to ``capacity.lease_wait_s`` (then it is ``skipped_no_capacity``), is
dispatched to its region's runner, and its result is written as it arrives.
A runner that dies fails its in-flight sessions as ``tester`` failures, the
driver stops their streams at the gateway, and a new runner takes over.
SIGINT / SIGTERM (and ``ray job stop``) stop every live session (each tears
its stream down), write what was gathered and exit.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from fleet.errors import AnyErrorClass, TesterError
from fleet.plan import Plan, PlannedSession, make_plan
from fleet.prompts import PoolEntry, resolve_pool
from fleet.results.row import Identity, SessionRow
from fleet.results.outputs import Outputs
from fleet.results.sink import ParquetSink, read_table, summaries_table
from fleet.results.verdict import AbortWatch, evaluate, history_baseline, junit_xml
from fleet.runtime.broker import read_capacity
from fleet.runtime.dispatch import SYSTEM_CLOCK, Clock, Dispatched, Dispatcher, Executor
from fleet.runtime.driver import drive
from fleet.runtime.executor import Finished
from fleet.runtime.job import Job, prompt_changes
from fleet.runtime.lifecycle import (Campaign, CampaignOptions, leaks, open_gateways, open_outputs, prepare, ray_init,
                                     results_dir, with_gpu)
from fleet.runtime.summary import make_summary, print_summary
from fleet.scenario import Scenario, load_scenario

__all__ = ["CampaignOptions", "PlanSource", "run_campaign"]

log = logging.getLogger("fleet.run")

EXIT_OK, EXIT_BREACH, EXIT_INTERRUPTED = 0, 3, 130
EXIT_TESTER = TesterError.exit_code   # 4: the one place it is set


def _prompt_lookup(pool: list[PoolEntry]) -> dict[tuple[str, str], Any]:
    return {(e.set_name, e.prompt.id): e.prompt for e in pool}


def _job(scenario: Scenario, s: PlannedSession, campaign_id: str, url: str,
         prompts: dict[tuple[str, str], Any]) -> Job:
    return Job(f"{campaign_id}-{s.index:05d}", url, s.duration_s, prompt_changes(scenario, s.prompts, prompts, s.seed),
               s.orchestrator, s.orchestrator_uri)


def _identity(c: Campaign, plan: Plan, s: PlannedSession, region: str | None, session_id: str,
              target: str | None = None) -> Identity:
    first = s.prompts[0] if s.prompts else None
    return Identity(campaign_id=c.campaign_id, run_id=c.campaign_id, scenario=c.scenario.name,
                    scenario_hash=plan.scenario_hash, model=c.scenario.workflow.pipeline,
                    dialect=c.scenario.target.dialect, session_id=session_id, region=region,
                    gateway=c.urls.get(region) if region else None, prompt_id=first.prompt_id if first else None,
                    prompt_category=first.category if first else None, planned_start_s=s.start_s,
                    target_orchestrator=target)


def _of(c: Campaign, plan: Plan, live: Dispatched) -> Identity:
    return _identity(c, plan, live.session, live.region, live.job.session_id, live.job.target)


def _result_row(c: Campaign, plan: Plan, live: Dispatched, row: SessionRow) -> SessionRow:
    """A runner's row with the campaign's identity columns."""
    return with_gpu(c, replace(row.identified(_of(c, plan, live)),
                               orchestrator_address=row.orchestrator_address or live.job.orchestrator))


def _failed_row(c: Campaign, plan: Plan, live: Dispatched, error: AnyErrorClass, detail: str) -> SessionRow:
    return with_gpu(c, SessionRow.failed(_of(c, plan, live), error, detail, started_unix=time.time(),
                                         orchestrator_address=live.session.orchestrator))


def _skipped_row(c: Campaign, plan: Plan, live: Dispatched, wait_s: float, evidence: dict[str, Any]) -> SessionRow:
    return with_gpu(c, SessionRow.skipped(_of(c, plan, live), "no_slot_leased",
                                          f"no idle slot within the campaign's caps for {wait_s:g} s",
                                          started_unix=time.time(), orchestrator_address=live.session.orchestrator,
                                          **evidence))


def _planner_skipped_row(c: Campaign, plan: Plan, index: int, skipped: Any) -> SessionRow:
    """A row for a session the planner could not fit within the caps: it never ran."""
    ident = Identity(campaign_id=c.campaign_id, run_id=c.campaign_id, scenario=c.scenario.name,
                     scenario_hash=plan.scenario_hash, model=c.scenario.workflow.pipeline,
                     dialect=c.scenario.target.dialect, session_id=f"{c.campaign_id}-skipped-{index:05d}",
                     planned_start_s=skipped.at_s)
    return SessionRow.skipped(ident, "planner_skipped", skipped.reason, started_unix=time.time())


def run_campaign(path: str, opts: CampaignOptions) -> int:
    scenario = load_scenario(path)
    c = Campaign(scenario, opts)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    c.campaign_id = c.run_id = f"{scenario.name}-{stamp}-{uuid.uuid4().hex[:4]}"
    regions = [r.name for r in scenario.placement.regions]
    stops = prepare(c, path)
    with c.closing:   # undone on every exit path, last opened first
        open_gateways(c, path)
        snapshot = read_capacity(scenario, c.capacity_url, "--capacity-url" if opts.capacity_url else None)
        c.snapshot = snapshot
        pool = resolve_pool(scenario.prompts.sets, scenario.base_dir, scenario.source)
        plan = make_plan(scenario, snapshot, opts.seed, pool=pool)
        out = results_dir(c)
        outputs, sink = open_outputs(c, path, lambda: ParquetSink(out, c.campaign_id, {
            "scenario": scenario.name, "scenario_hash": plan.scenario_hash, "seed": opts.seed,
            "planned_sessions": len(plan.sessions), "planner_skipped": len(plan.skipped),
            "capacity": snapshot.summary(), "regions": regions, "started_at": stamp}))
        print(f"fleet: campaign {c.campaign_id}: {len(plan.sessions)} sessions over {plan.end_s:g} s, "
              f"at most {plan.budget} at once, regions {', '.join(regions)}", flush=True)
        for note in plan.notes:
            print(f"fleet: note: {note}", flush=True)
        prompts = _prompt_lookup(pool)  # before Ray: in a job, ray.init may take the working dir away
        ray_init(c, regions)
        stops.install()  # Ray's core worker installs its own fatal SIGTERM handler: ours goes back on top
        code = _drive(c, plan, outputs, sink, prompts)
        leaked = leaks(c)
        stored = read_table(sink.dir, "sessions").to_pylist()  # the verdict reads what was stored, not memory
        summary = make_summary(c, stored, leaked)
        outputs.store({"summaries": summaries_table(c.sketches.rows(), {
            "campaign_id": c.campaign_id, "run_id": c.campaign_id, "scenario": scenario.name,
            "scenario_hash": plan.scenario_hash})})
        closed = outputs.close()   # Kafka's deliveries, ClickHouse's rows or error
        history = history_baseline(out, scenario.workflow.pipeline, exclude=c.campaign_id)  # NaaP's 7 days
        verdict = evaluate(scenario, stored, *(history or (None, None)))
        summary["quantiles"] = c.sketches.campaign_quantiles()
        summary["verdict"] = verdict.to_dict()
        summary["clickhouse"] = closed.get("clickhouse")
        summary["kafka"] = closed.get("kafka")
        sink.finish(summary)
        if opts.junit or scenario.outputs.junit:
            junit = Path(str(opts.junit or scenario.outputs.junit))
            junit.parent.mkdir(parents=True, exist_ok=True)
            junit.write_bytes(junit_xml(verdict, f"fleet.{scenario.name}"))
            summary["junit"] = str(junit)
        if scenario.outputs.report:
            from fleet.results.report import write_report

            summary["report"] = str(write_report(sink.dir))
        print_summary(c, summary, sink.dir)
        if code == EXIT_OK and (verdict.breached or c.aborted):
            return EXIT_BREACH
        return code


class PlanSource:
    """The campaign's sessions (``fleet.runtime.driver.Source``): the plan followed in real time by the
    dispatcher (fleet.runtime.dispatch), each session's row with the campaign's identity; the sessions the
    planner could not fit come first, as skipped rows."""

    def __init__(self, c: Campaign, plan: Plan, ex: Executor, prompts: dict[tuple[str, str], Any],
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.c, self.plan, self.ex = c, plan, ex
        self.planned: int | None = len(plan.sessions)
        self.wait_s = c.scenario.capacity.lease_wait_s
        self.d = Dispatcher(plan.sessions, ex, self.wait_s,
                            lambda s, region: _job(c.scenario, s, c.campaign_id, c.urls[region], prompts), clock)
        # sessions the planner could not fit are results too: the skipped rate counts them
        self.opening = [_planner_skipped_row(c, plan, i, k) for i, k in enumerate(plan.skipped)]

    def begin(self) -> None:
        self.d.begin()

    def busy(self) -> bool:
        return bool(self.opening) or self.d.busy()

    def step(self) -> list[SessionRow]:
        if self.opening:
            rows, self.opening = self.opening, []
            return rows
        turn = self.d.step()
        skipped = [_skipped_row(self.c, self.plan, k, self.wait_s, self.ex.evidence(k.job.target)) for k in turn.skipped]
        return skipped + self.ended(turn.finished)

    def ended(self, finished: list[Finished]) -> list[SessionRow]:
        c, plan = self.c, self.plan
        return [_result_row(c, plan, f.tag, f.row) if f.row is not None else _failed_row(c, plan, f.tag, *f.failure)
                for f in finished]

    def status(self) -> dict[str, Any]:
        return {"planned": len(self.plan.sessions)}


def _drive(c: Campaign, plan: Plan, outputs: Outputs, sink: ParquetSink, prompts: dict[tuple[str, str], Any]) -> int:
    from fleet.runtime.executor import RayExecutor

    assert c.snapshot is not None, "the capacity is read before the campaign is driven"
    local = not (c.opts.address or os.environ.get("RAY_ADDRESS"))
    ex = RayExecutor(c.scenario, c.urls, c.snapshot, [c.opts.host_address] if local else None, c.capacity_url)
    drive(c, ex, PlanSource(c, plan, ex, prompts), outputs, sink, AbortWatch(c.scenario.checks))
    if c.stop_signal is not None:
        return EXIT_INTERRUPTED
    return EXIT_TESTER if ex.tester_failures or c.tester_error else EXIT_OK
