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
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.plan import Plan, PlannedSession, make_plan
from fleet.prompts import render_params
from fleet.results.sink import ParquetSink
from fleet.results.verdict import AbortWatch, evaluate, history_baseline, junit_xml
from fleet.results.writer import ResultsWriter
from fleet.runtime.broker import read_capacity
from fleet.runtime.executor import STOP_GRACE_S, Finished
from fleet.runtime.lifecycle import (Campaign, CampaignOptions, close_all, leaks, open_gateways, open_outputs, prepare,
                                     push, ray_init, results_dir, with_gpu)
from fleet.runtime.summary import Progress, make_summary, print_summary
from fleet.scenario import Scenario, load_scenario

__all__ = ["CampaignOptions", "run_campaign"]

log = logging.getLogger("fleet.run")

EXIT_OK, EXIT_BREACH, EXIT_TESTER, EXIT_INTERRUPTED = 0, 3, 4, 130
HEAVY = ("latency_samples", "per_second", "events", "status_samples")  # kept in Parquet, not in the driver's memory
POLL_S = 0.2
LIVE_EVERY_S = 5.0   # campaign.json's live status this often
STATE_EVERY_S = 2.0  # the broker's state for the Prometheus gauges this often
STARVE_STEP_S = 2 * POLL_S  # at most this much of one dispatch pass counts as a due session's wait


@dataclass
class _Live:
    session: PlannedSession
    job: dict[str, Any]
    lease_id: str
    region: str


def _prompt_lookup(scenario: Scenario) -> dict[tuple[str, str], Any]:
    return {(e.set_name, e.prompt.id): e.prompt for e in scenario.prompt_pool()}


def _job(scenario: Scenario, s: PlannedSession, campaign_id: str, url: str, prompts: dict) -> dict[str, Any]:
    steps = []
    for p in s.prompts:
        prompt = prompts[(p.set, p.prompt_id)]
        steps.append({"at_s": p.at_s, "params": render_params(scenario.workflow.params, prompt, s.seed),
                      "prompt_id": p.prompt_id, "category": p.category})
    return {"session_id": f"{campaign_id}-{s.index:05d}", "gateway_url": url, "duration_s": s.duration_s,
            "orchestrator": s.orchestrator, "orchestrator_uri": s.orchestrator_uri, "prompts": steps}


def _identity(c: Campaign, plan: Plan, s: PlannedSession, region: str) -> dict[str, Any]:
    first = s.prompts[0] if s.prompts else None
    return {"campaign_id": c.campaign_id, "run_id": c.campaign_id, "scenario": c.scenario.name,
            "scenario_hash": plan.scenario_hash, "model": c.scenario.workflow.pipeline, "region": region,
            "prompt_id": first.prompt_id if first else None, "prompt_category": first.category if first else None,
            "planned_start_s": s.start_s, "gateway": c.urls.get(region)}


def _result_row(c: Campaign, plan: Plan, live: _Live, row: dict[str, Any]) -> dict[str, Any]:
    """A runner's result with the campaign's identity columns."""
    return with_gpu(c, {**row, **_identity(c, plan, live.session, live.region), "session_id": live.job["session_id"],
                         "orchestrator_address": row.get("orchestrator_address") or live.job["orchestrator"],
                         "target_orchestrator": live.job.get("orchestrator_uri") or live.job.get("orchestrator")})


def _failed_row(c: Campaign, plan: Plan, live: _Live, outcome: str, phase: str, error: str, detail: str) -> dict:
    return with_gpu(c, {**_identity(c, plan, live.session, live.region), "session_id": live.job["session_id"],
            "dialect": c.scenario.target.dialect, "outcome": outcome, "error_phase": phase, "error_class": error,
            "error_detail": detail, "started_unix": time.time(), "duration_s": 0.0,
            "orchestrator_address": live.session.orchestrator,
            "target_orchestrator": live.job.get("orchestrator_uri") or live.job.get("orchestrator")})


def _planner_skipped_row(c: Campaign, plan: Plan, index: int, skipped: Any) -> dict[str, Any]:
    """A row for a session the planner could not fit within the caps: it never ran."""
    return {"campaign_id": c.campaign_id, "run_id": c.campaign_id, "scenario": c.scenario.name,
            "scenario_hash": plan.scenario_hash, "model": c.scenario.workflow.pipeline, "region": None,
            "session_id": f"{c.campaign_id}-skipped-{index:05d}", "dialect": c.scenario.target.dialect,
            "planned_start_s": skipped.at_s, "outcome": "skipped_no_capacity", "error_phase": "capacity",
            "error_class": "planner_skipped", "error_detail": skipped.reason, "started_unix": time.time(),
            "duration_s": 0.0}


def run_campaign(path: str, opts: CampaignOptions) -> int:
    scenario = load_scenario(path)
    c = Campaign(scenario, opts)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    c.campaign_id = f"{scenario.name}-{stamp}-{uuid.uuid4().hex[:4]}"
    regions = [r.name for r in scenario.placement.regions]
    stops = prepare(c, path)
    started_ray = False
    try:
        open_gateways(c, path)
        snapshot = read_capacity(scenario, c.urls[regions[0]])
        c.snapshot = snapshot
        plan = make_plan(scenario, snapshot, opts.seed)
        out = results_dir(c)
        open_outputs(c, path)
        sink = ParquetSink(out, c.campaign_id, {"scenario": scenario.name, "scenario_hash": plan.scenario_hash,
                                                 "seed": opts.seed, "planned_sessions": len(plan.sessions),
                                                 "planner_skipped": len(plan.skipped),
                                                 "capacity": snapshot.summary(), "regions": regions,
                                                 "started_at": stamp})
        print(f"fleet: campaign {c.campaign_id}: {len(plan.sessions)} sessions over {plan.end_s:g} s, "
              f"at most {plan.budget} at once, regions {', '.join(regions)}", flush=True)
        prompts = _prompt_lookup(scenario)  # before Ray: in a job, ray.init may take the working dir away
        started_ray = ray_init(c, regions)
        stops.install()  # Ray's core worker installs its own fatal SIGTERM handler: ours goes back on top
        code = _drive(c, plan, sink, prompts)
        leaked = leaks(c)
        summary = make_summary(c, plan, leaked)
        summaries = sink.write_summaries(c.sketches.rows(), {"campaign_id": c.campaign_id, "run_id": c.campaign_id,
                                                             "scenario": scenario.name,
                                                             "scenario_hash": plan.scenario_hash})
        push(c, sink, {"summaries": summaries})
        history = history_baseline(out, scenario.workflow.pipeline, exclude=c.campaign_id)  # NaaP's 7 days
        verdict = evaluate(scenario, c.rows, *(history or (None, None)))
        summary["quantiles"] = c.sketches.campaign_quantiles()
        summary["verdict"] = verdict.to_dict()
        summary["clickhouse"] = c.clickhouse_state
        if c.kafka is not None:
            summary["kafka"] = c.kafka.close(STOP_GRACE_S)
            c.kafka = None
        sink.close(summary)
        if opts.junit or scenario.outputs.junit:
            junit = Path(opts.junit or scenario.outputs.junit)
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
    finally:
        close_all(c, started_ray)
        stops.restore()


def _drive(c: Campaign, plan: Plan, sink: ParquetSink,  # noqa: C901
           prompts: dict[tuple[str, str], Any]) -> int:
    from fleet.runtime.executor import RayExecutor

    scenario = c.scenario
    local = not (c.opts.address or os.environ.get("RAY_ADDRESS"))
    ex = RayExecutor(scenario, c.urls, c.snapshot, [c.opts.host_address] if local else None)
    c.warmup_s = ex.warm()
    pending = deque(sorted(plan.sessions, key=lambda s: s.start_s))
    waiting: deque[list] = deque()  # [session, starved s]: due, waiting for a lease (first come, first served)
    planned_now = _planned_concurrency(plan)
    counts: dict[str, int] = {}
    done = 0
    progress = Progress(len(pending), c.opts.progress)
    t0 = time.monotonic()
    wait_s = scenario.capacity.lease_wait_s

    abort = AbortWatch(scenario.checks)
    writer = ResultsWriter(lambda rows: _store(c, sink, rows))  # I/O off the dispatch loop

    def finish(rows: list[dict[str, Any]], planned: bool = False) -> None:
        nonlocal done
        if not rows:
            return
        for r in rows:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        if not planned:
            done += len(rows)
        c.sketches.add_rows(rows)
        if c.metrics is not None:
            c.metrics.add(rows)
        writer.submit(rows)
        c.rows.extend({k: v for k, v in r.items() if k not in HEAVY} for r in rows)
        if abort.checks and c.aborted is None:
            breached = abort.add(rows, time.monotonic() - t0)
            if breached is not None:
                c.aborted = f"{breached.check} [{breached.group_label}] = {breached.value:g}"
                print(f"fleet: abort check breached: {c.aborted}; stopping the campaign", file=sys.stderr, flush=True)

    def rows_of(finished: list[Finished]) -> list[dict[str, Any]]:
        return [_result_row(c, plan, f.tag, f.row) if f.row is not None
                else _failed_row(c, plan, f.tag, "failed", "tester", *f.error) for f in finished]

    # sessions the planner could not fit are results too: the skipped rate counts them
    finish([_planner_skipped_row(c, plan, i, k) for i, k in enumerate(plan.skipped)], planned=True)

    last = shown = 0.0
    try:
        while pending or waiting or ex.live:
            if c.stop_signal is not None or c.aborted is not None:
                break
            now = time.monotonic() - t0
            while pending and pending[0].start_s <= now:
                waiting.append([pending.popleft(), 0.0])
            # a refusal while our own sessions (running past their plan) hold the planned slots is no
            # shortage: the queue waits for them; only a refusal below the planned load starves it
            if waiting and (not ex.live or len(ex.live) < planned_now(now)):
                for w in waiting:  # a pass of this loop slower than STARVE_STEP_S is our own delay, not theirs
                    w[1] += min(now - last, STARVE_STEP_S)
            last = now
            while waiting:
                s = waiting[0][0]
                region = ex.region_for(s.region)
                lease = ex.lease(region, s.orchestrator, s.duration_s)
                if lease is None:
                    break
                waiting.popleft()
                job = _job(scenario, s, c.campaign_id, c.urls[region], prompts)
                job["orchestrator"] = lease["orchestrator"]
                job["orchestrator_uri"] = lease["orchestrator_uri"]
                ex.start(region, job, lease["id"], _Live(s, job, lease["id"], region))
            skipped = []
            while waiting and waiting[0][1] > wait_s:
                s = waiting.popleft()[0]
                region = ex.region_for(s.region)
                info = _Live(s, _job(scenario, s, c.campaign_id, c.urls[region], prompts), "", region)
                skipped.append(_failed_row(c, plan, info, "skipped_no_capacity", "capacity", "no_slot_leased",
                                           f"no idle slot within the campaign's caps for {wait_s:g} s"))
            finish(skipped)
            if ex.live:
                finished = ex.poll(POLL_S)
            else:
                finished = []
                gap = pending[0].start_s - (time.monotonic() - t0) if pending and not waiting else POLL_S
                time.sleep(min(POLL_S, max(0.0, gap)))
            finish(rows_of(finished))
            progress.update(done, len(ex.live), counts)
            if time.monotonic() - shown >= LIVE_EVERY_S:  # campaign.json's live status, for dashboards
                shown = time.monotonic()
                sink.progress({"updated_at": dt.datetime.now(dt.timezone.utc).isoformat(), "sessions": dict(counts),
                               "done": done, "planned": len(plan.sessions), "live_sessions": len(ex.live)})
            if c.metrics is not None:  # the broker's leases against its budget, asked without waiting
                state = ex.broker_state(STATE_EVERY_S)
                if state is not None:
                    c.metrics.broker(state)
    finally:
        if ex.live:
            finish(rows_of(ex.stop_all(STOP_GRACE_S)))
            if c.stop_at is not None:
                c.stop_s = round(time.monotonic() - c.stop_at, 3)
        progress.close()
        writer.close()  # every row on disk before the summary
        c.broker_state = ex.final_state()
    if c.stop_signal is not None:
        return EXIT_INTERRUPTED
    return EXIT_TESTER if ex.tester_failures else EXIT_OK


def _planned_concurrency(plan: Plan) -> Any:
    """t -> how many sessions the plan has running at t."""
    import bisect

    starts = sorted(s.start_s for s in plan.sessions)
    ends = sorted(s.end_s for s in plan.sessions)
    return lambda t: bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)


def _store(c: Campaign, sink: ParquetSink, rows: list[dict[str, Any]]) -> None:
    """One batch of finished sessions: Parquet, then ClickHouse, then Kafka (on the writer's thread)."""
    push(c, sink, sink.write(rows))
    if c.kafka is not None:
        c.kafka.publish(rows)

