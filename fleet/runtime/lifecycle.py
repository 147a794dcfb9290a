"""What a run on Ray (``fleet run`` or ``fleet monitor``) sets up and tears down, in one place.

``Campaign`` is the run's context: its scenario and options, the gateway URLs per region, the live
tally, sketches and Prometheus metrics of its outputs (``open_outputs``) and whether a stop signal came. Each function
that opens a piece registers how to close it on the run's ``contextlib.ExitStack``
(``Campaign.closing``); the run closes the stack on every exit path, which undoes everything in
the reverse order of opening (the private Ray, the outputs with what is queued handed over, the
reference gateway we started, the signal handlers), each step even when an earlier one failed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import ExitStack
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from fleet.capacity import CapacitySnapshot
from fleet.errors import InputError
from fleet.results.clickhouse import ClickHouseFeed, ClickHouseSink
from fleet.results.kafka import KafkaFeed
from fleet.results.outputs import Outputs, Tally
from fleet.results.prometheus import CampaignMetrics
from fleet.results.row import SessionRow
from fleet.results.sink import ParquetSink
from fleet.results.sketches import Sketches
from fleet.runtime.broker import capacity_url
from fleet.runtime.executor import STOP_GRACE_S
from fleet.scenario import Scenario

__all__ = ["Campaign", "CampaignOptions", "StopSignals", "leaks", "open_gateways", "open_outputs",
           "prepare", "ray_init", "results_dir", "warn_job_stop_wait", "with_gpu"]


@dataclass
class CampaignOptions:
    address: str | None = None
    seed: int = 0
    out_dir: str | None = None
    host_address: str = "127.0.0.1"     # tester address for ICE host candidates on a local run
    ray_ip: str = "127.0.0.2"           # the private Ray's node address
    progress: bool | None = None        # None: a bar when stdout is a terminal
    gateway_url: str | None = None      # override the scenario's target URL (all regions)
    capacity_url: str | None = None     # override where the gateway's capacity is read (its CLI URL)
    junit: str | None = None            # write JUnit XML of the checks here (overrides outputs.junit)
    json: bool = False                  # also print the JSON summary (campaign.json's) as the last line


@dataclass
class Campaign:
    scenario: Scenario
    opts: CampaignOptions
    campaign_id: str = ""
    run_id: str = ""              # this run of it (a campaign: its id; a monitor: each start of it)
    gateway_proc: Any = None
    urls: dict[str, str] = field(default_factory=dict)
    capacity_url: str | None = None        # where the capacity is read (fleet.runtime.broker.capacity_url)
    stop_signal: int | None = None
    sketches: Sketches = field(default_factory=Sketches)
    tally: Tally = field(default_factory=Tally)
    metrics: CampaignMetrics | None = None    # when outputs.prometheus is set (the driver feeds it broker state)
    aborted: str | None = None
    tester_error: str | None = None        # the tester's machinery failed mid-run (fleet.errors.TesterError)
    snapshot: CapacitySnapshot | None = None
    warmup_s: float | None = None
    stop_at: float | None = None
    stop_s: float | None = None   # from the signal to every live session ended
    broker_state: dict[str, Any] = field(default_factory=dict)
    closing: ExitStack = field(default_factory=ExitStack)  # what undoes each piece opened, last first


def with_gpu(c: Campaign, row: SessionRow) -> SessionRow:
    """Fill the GPU from the capacity snapshot when the gateway's status named none: its name when
    all the orchestrator's GPUs are one model, its id when it has one GPU."""
    url, address = row.orchestrator_url or row.target_orchestrator, row.orchestrator_address
    if row.gpu_name or c.snapshot is None or not (url or address):
        return row
    o = c.snapshot.gpus_of(url, address)   # by URL first: an orchestrator without ticket params has no address
    if o is None:
        return row
    names = {name for _, name in o.gpus}
    return replace(row, gpu_name=names.pop() if len(names) == 1 else None,
                   gpu_id=row.gpu_id or (o.gpus[0][0] if len(o.gpus) == 1 else None))


def ray_init(c: Campaign, regions: list[str]) -> bool:
    """Join the cluster, or start a private one on loopback (shut down with the run). True when we started it."""
    import ray

    address = c.opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        # no runtime_env here: inside `ray job submit` it would replace the job's (its working_dir);
        # outside a job, the nodes run the fleet installed on them
        ray.init(address=address, log_to_driver=False)
        return False
    resources: dict[str, float] = {f"region:{r}": 1000 for r in regions}
    ray.init(address="local", _node_ip_address=c.opts.ray_ip, include_dashboard=False, log_to_driver=False,
             resources=resources, num_cpus=os.cpu_count() or 1)
    c.closing.callback(ray.shutdown)
    return True


def prepare(c: Campaign, path: str) -> StopSignals:
    """Before anything starts: the gateway token is set, SIGINT / SIGTERM stop the run cleanly."""
    env = c.scenario.target.token_env
    if env and env not in os.environ:
        raise InputError(f"{path}: target.token_env names {env}, which is not set in the environment")
    stops = StopSignals(c)
    c.closing.callback(stops.restore)
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

        c.gateway_proc = c.closing.enter_context(GatewayProcess())
        print(f"fleet: reference gateway at {c.gateway_proc.url}", flush=True)
    for r in (r.name for r in c.scenario.placement.regions):
        url = opts.gateway_url or target.region_urls.get(r) or target.url or (c.gateway_proc and c.gateway_proc.url)
        if not url:
            raise InputError(f"{path}: target: no gateway URL for region {r!r} (give target.url or region_urls)")
        c.urls[r] = url
    first = c.urls[c.scenario.placement.regions[0].name]
    local_cli = c.gateway_proc.cli_url if c.gateway_proc is not None else None
    c.capacity_url = capacity_url(c.scenario, first, opts.capacity_url, local_cli)


def open_outputs(c: Campaign, path: str, parquet: Callable[[], ParquetSink],
                 flush_s: float = 0.0) -> tuple[Outputs, ParquetSink]:
    """The run's outputs, in their one order: the live tally, the sketches, Prometheus and Kafka at once;
    Parquet (made by ``parquet``, once the others opened), then ClickHouse, on the writer's thread (storage
    every ``flush_s``). Each fails early on a missing variable or a port it cannot listen on; whatever
    opened is closed with the run (``Outputs.close`` on the run's stack), what Kafka holds handed over."""
    spec = c.scenario.outputs
    outputs = Outputs([c.tally, c.sketches], flush_s)
    c.closing.callback(_stop_metrics, c)   # after every output closed (the stack runs last first)
    c.closing.push(outputs.exit)
    if spec.prometheus is not None:
        metrics = c.metrics = CampaignMetrics()
        try:
            port = metrics.serve(spec.prometheus.host, spec.prometheus.port)
        except OSError as exc:
            raise InputError(f"{path}: outputs.prometheus: cannot listen on {spec.prometheus.host}:"
                             f"{spec.prometheus.port} ({exc.strerror or exc})") from None
        print(f"fleet: Prometheus metrics at http://{spec.prometheus.host}:{port}/metrics", flush=True)
        outputs.append(metrics)
    if spec.kafka is not None:
        outputs.append(KafkaFeed(spec.kafka, flush_s=STOP_GRACE_S))
    clickhouse = None if spec.clickhouse is None else ClickHouseSink(spec.clickhouse)
    try:
        sink = parquet()
    except BaseException:
        if clickhouse is not None:  # not in the list yet
            clickhouse.close()
        raise
    outputs.append(sink)
    if clickhouse is not None and spec.clickhouse is not None:
        outputs.append(ClickHouseFeed(clickhouse, spec.clickhouse, c.campaign_id, sink.run_tag, sink.dir))
    return outputs, sink


def _stop_metrics(c: Campaign) -> None:
    """The Prometheus endpoint, if one was opened: kept up ``linger_s`` for a last scrape when the run
    ended as it should (its sessions ran, no signal), then stopped."""
    if c.metrics is None:
        return
    prom = c.scenario.outputs.prometheus
    ran = c.warmup_s is not None and c.stop_signal is None and c.tester_error is None
    c.metrics.stop(prom.linger_s if prom is not None and ran else 0.0)


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


def leaks(c: Campaign) -> int | None:
    """Streams our reference gateway still lists as open (a leak), when we run it."""
    if c.gateway_proc is None:
        return None
    try:
        return int(httpx.get(f"{c.gateway_proc.url}/debug/streams", timeout=5).json()["open"])
    except httpx.HTTPError:
        return None
