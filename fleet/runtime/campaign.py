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
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleet.capacity import CapacitySnapshot
from fleet.errors import InputError
from fleet.plan import Plan, PlannedSession, make_plan
from fleet.prompts import render_params
from fleet.results.clickhouse import ClickHouseError, ClickHouseSink
from fleet.results.sink import ParquetSink
from fleet.results.sketches import Sketches
from fleet.results.verdict import AbortWatch, evaluate, history_baseline, junit_xml
from fleet.results.writer import ResultsWriter
from fleet.runtime.broker import read_capacity
from fleet.runtime.executor import STOP_GRACE_S, Finished
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
class CampaignOptions:
    address: str | None = None
    seed: int = 0
    out_dir: str | None = None
    host_address: str = "127.0.0.1"     # tester address for ICE host candidates on a local run
    ray_ip: str = "127.0.0.2"           # the private Ray's node address
    progress: bool | None = None        # None: a bar when stdout is a terminal
    gateway_url: str | None = None      # override the scenario's target URL (all regions)
    junit: str | None = None            # write JUnit XML of the checks here (overrides outputs.junit)


@dataclass
class _Live:
    session: PlannedSession
    job: dict[str, Any]
    lease_id: str
    region: str


@dataclass
class Campaign:
    scenario: Scenario
    opts: CampaignOptions
    campaign_id: str = ""
    gateway_proc: Any = None
    urls: dict[str, str] = field(default_factory=dict)
    stop_signal: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    sketches: Sketches = field(default_factory=Sketches)
    clickhouse: Any = None
    clickhouse_state: dict[str, Any] | None = None
    kafka: Any = None                      # a KafkaFeed, when outputs.kafka is set
    metrics: Any = None                    # CampaignMetrics, when outputs.prometheus is set
    aborted: str | None = None
    snapshot: CapacitySnapshot | None = None
    warmup_s: float | None = None
    stop_at: float | None = None
    stop_s: float | None = None   # from the signal to every live session ended
    broker_state: dict[str, Any] = field(default_factory=dict)


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


def with_gpu(c: Campaign, row: dict[str, Any]) -> dict[str, Any]:
    """Fill the GPU from the capacity snapshot when the gateway's status named none: its name when
    all the orchestrator's GPUs are one model, its id when it has one GPU."""
    url, address = row.get("orchestrator_url"), row.get("orchestrator_address")
    if row.get("gpu_name") or c.snapshot is None or not (url or address):
        return row
    for o in c.snapshot.orchestrators:  # by URL first: an orchestrator without ticket params has no address
        if (o.uri == url if url else o.address == address) and o.gpus:
            names = {name for _, name in o.gpus}
            row["gpu_name"] = names.pop() if len(names) == 1 else None
            row["gpu_id"] = row.get("gpu_id") or (o.gpus[0][0] if len(o.gpus) == 1 else None)
            break
    return row


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


def ray_init(c: Campaign, regions: list[str]) -> bool:
    """Join the cluster, or start a private one on loopback. True when we started it."""
    import ray

    address = c.opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        # no runtime_env here: inside `ray job submit` it would replace the job's (its working_dir);
        # outside a job, the nodes run the fleet installed on them
        ray.init(address=address, log_to_driver=False)
        return False
    resources = {f"region:{r}": 1000 for r in regions}
    ray.init(address="local", _node_ip_address=c.opts.ray_ip, include_dashboard=False, log_to_driver=False,
             resources=resources, num_cpus=os.cpu_count() or 1)
    return True


class _Progress:
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
        leaked = _leaks(c)
        summary = _summary(c, plan, leaked)
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
        _print_summary(c, summary, sink.dir)
        if code == EXIT_OK and (verdict.breached or c.aborted):
            return EXIT_BREACH
        return code
    finally:
        close_all(c, started_ray)
        stops.restore()


def prepare(c: Campaign, path: str) -> StopSignals:
    """Before anything starts: the gateway token is set, SIGINT / SIGTERM stop the run cleanly."""
    env = c.scenario.target.token_env
    if env and env not in os.environ:
        raise InputError(f"{path}: target.token_env names {env}, which is not set in the environment")
    stops = StopSignals(c)
    warn_job_stop_wait()
    return stops


def results_dir(c: Campaign) -> Path:
    """``--out``, else the scenario's ``outputs.dir`` (relative to the working directory)."""
    out = Path(c.opts.out_dir or c.scenario.outputs.dir)
    return out if out.is_absolute() else Path.cwd() / out


class StopSignals:
    """SIGINT / SIGTERM (and so ``ray job stop``) set ``c.stop_signal``: the loop stops every live session."""

    def __init__(self, c: Campaign) -> None:
        self.c = c
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.install()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.c.stop_signal is None:
            print(f"fleet: {signal.Signals(signum).name}: stopping every live session", file=sys.stderr, flush=True)
            self.c.stop_at = time.monotonic()
        self.c.stop_signal = signum

    def install(self) -> None:
        for s in self.previous:
            signal.signal(s, self._on_signal)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def open_gateways(c: Campaign, path: str) -> None:
    """Each region's gateway URL; for a ``reference`` target with no URL, start the reference gateway."""
    target, opts = c.scenario.target, c.opts
    if opts.gateway_url is None and target.dialect == "reference" and not target.url and not target.region_urls:
        from fleet.gateway.process import GatewayProcess

        c.gateway_proc = GatewayProcess().__enter__()
        print(f"fleet: reference gateway at {c.gateway_proc.url}", flush=True)
    for r in (r.name for r in c.scenario.placement.regions):
        url = opts.gateway_url or target.region_urls.get(r) or target.url or (c.gateway_proc and c.gateway_proc.url)
        if not url:
            raise InputError(f"{path}: target: no gateway URL for region {r!r} (give target.url or region_urls)")
        c.urls[r] = url


def open_outputs(c: Campaign, path: str) -> None:
    """ClickHouse, Kafka and the Prometheus endpoint, as the scenario asks (each fails early on a missing
    variable or a port it cannot listen on)."""
    outputs = c.scenario.outputs
    if outputs.clickhouse is not None:
        c.clickhouse = ClickHouseSink(outputs.clickhouse)
        c.clickhouse_state = {"table_prefix": outputs.clickhouse.table_prefix,
                              "database": outputs.clickhouse.database, "rows": 0, "error": None}
    if outputs.kafka is not None:
        from fleet.results.kafka import KafkaFeed

        c.kafka = KafkaFeed(outputs.kafka)
    if outputs.prometheus is not None:
        from fleet.results.prometheus import CampaignMetrics

        prom = outputs.prometheus
        c.metrics = CampaignMetrics()
        try:
            port = c.metrics.serve(prom.host, prom.port)
        except OSError as exc:
            raise InputError(f"{path}: outputs.prometheus: cannot listen on {prom.host}:{prom.port} "
                             f"({exc.strerror or exc})") from None
        print(f"fleet: Prometheus metrics at http://{prom.host}:{port}/metrics", flush=True)


def close_all(c: Campaign, started_ray: bool) -> None:
    """Outputs, then Ray, then the gateway we started: on every exit path."""
    if c.clickhouse is not None:
        c.clickhouse.close()
    if c.kafka is not None:  # an early exit: still hand over what is queued
        c.kafka.close(STOP_GRACE_S)
    if c.metrics is not None:
        prom = c.scenario.outputs.prometheus
        linger = prom.linger_s if prom else 0.0
        if linger and c.stop_signal is None:
            time.sleep(linger)  # the endpoint stays up for a last scrape (a wait, not synchronisation)
        c.metrics.close()
    if started_ray:
        import ray

        ray.shutdown()
    if c.gateway_proc is not None:
        c.gateway_proc.__exit__(None, None, None)


def warn_job_stop_wait() -> None:
    """Inside a Ray job, ``ray job stop`` SIGKILLs us RAY_JOB_STOP_WAIT_TIME_S after its SIGTERM."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    try:
        wait = float(os.environ.get("RAY_JOB_STOP_WAIT_TIME_S", "3"))
    except ValueError:
        wait = 3.0
    if wait < STOP_GRACE_S + 5:
        print(f"fleet: RAY_JOB_STOP_WAIT_TIME_S is {wait:g} s: `ray job stop` may kill this campaign before its "
              f"sessions are torn down; submit with --runtime-env-json "
              f"'{{\"env_vars\": {{\"RAY_JOB_STOP_WAIT_TIME_S\": \"{int(STOP_GRACE_S + 10)}\"}}}}'",
              file=sys.stderr, flush=True)


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
    progress = _Progress(len(pending), c.opts.progress)
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


def push(c: Campaign, sink: ParquetSink, tables: dict[str, Any]) -> None:
    """Send a batch just written to Parquet on to ClickHouse; after a failure, Parquet alone carries on."""
    if c.clickhouse is None or not tables or c.clickhouse_state["error"]:
        return
    try:
        c.clickhouse_state["rows"] += c.clickhouse.insert_batch(c.campaign_id, sink.seq, tables, sink.run_tag)
    except ClickHouseError as exc:
        c.clickhouse_state["error"] = str(exc)
        print(f"fleet: {exc}; results go on to Parquet only (load them later with `fleet results push "
              f"{sink.dir}`)", file=sys.stderr, flush=True)


def _leaks(c: Campaign) -> int | None:
    """Streams our reference gateway still lists as open (a leak), when we run it."""
    if c.gateway_proc is None:
        return None
    try:
        return int(httpx.get(f"{c.gateway_proc.url}/debug/streams", timeout=5).json()["open"])
    except httpx.HTTPError:
        return None


def _summary(c: Campaign, plan: Plan, leaked: int | None) -> dict[str, Any]:
    import statistics

    def med(key: str) -> float | None:
        xs = [r[key] for r in c.rows if r.get(key) is not None]
        return round(statistics.median(xs), 3) if xs else None

    outcomes: dict[str, int] = {}
    degraded: dict[str, dict[str, int]] = {}  # why sessions were degraded: reason -> GPU (or orchestrator) -> count
    for r in c.rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        if r["outcome"] == "degraded":
            where = r.get("gpu_name") or r.get("orchestrator_address") or "unknown GPU"
            for reason in r.get("reasons") or []:
                degraded.setdefault(reason, {}).setdefault(where, 0)
                degraded[reason][where] += 1
    return {"finished_at": dt.datetime.now(dt.timezone.utc).isoformat(), "sessions": len(c.rows),
            "outcomes": outcomes, "degraded_by": degraded, "startup_s_p50": med("startup_s"), "output_fps_p50": med("output_fps"),
            "g2g_latency_ms_p50": med("g2g_latency_ms"), "jitter_coeff_p50": med("jitter_coeff"),
            "stopped_by": signal.Signals(c.stop_signal).name if c.stop_signal else None, "stop_s": c.stop_s,
            "tester_bottleneck_sessions": sum(1 for r in c.rows if r.get("tester_bottleneck")),
            "broker": c.broker_state, "runner_warmup_s": c.warmup_s, "aborted": c.aborted,
            "leaked_streams": leaked}


def _print_summary(c: Campaign, summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    table = Table("sessions", "ok", "degraded", "failed", "skipped", "startup p50 s", "fps p50", "g2g p50 ms",
                  title=f"campaign {c.campaign_id}")
    o = summary["outcomes"]
    fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    table.add_row(str(summary["sessions"]), str(o.get("ok", 0)), str(o.get("degraded", 0)), str(o.get("failed", 0)),
                  str(o.get("skipped_no_capacity", 0)), fmt(summary["startup_s_p50"]), fmt(summary["output_fps_p50"]),
                  fmt(summary["g2g_latency_ms_p50"]))
    console.print(table)
    if summary["tester_bottleneck_sessions"]:
        console.print(f"[yellow]{summary['tester_bottleneck_sessions']} sessions ran on a saturated tester "
                      "(event-loop lag or CPU): their numbers include the tester's own delay[/]")
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
    if c.aborted:
        console.print(f"[red]aborted: {c.aborted}[/]")
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
    slim = {k: v for k, v in summary.items() if k != "verdict"}
    slim["verdict"] = {k: verdict[k] for k in ("passed", "breaches", "goodput", "sessions", "counted")}
    slim["sla_score"] = verdict["sla"].get("score")
    print(json.dumps({"campaign_id": c.campaign_id, "results": str(out), **slim}), flush=True)
