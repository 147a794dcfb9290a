"""A regional runner: one async Ray actor running many probe sessions in one event loop.

It is placed by a ``region:<name>`` resource (see cluster.yaml), builds each
session's probe from a small job description (the media clip is encoded
once per process), and reports its own health with every result (the probe's
event-loop lag and loop-thread CPU share over the session, the process's CPU),
so a session whose tester was the bottleneck is marked so.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from fleet.media import Clip, clip_for
from fleet.probe.looplag import quiet_gc
from fleet.probe.session import ProbeOptions, ProbeSpec, new_http_client, run_probe
from fleet.results.row import SessionRow
from fleet.results.sketches import session_sketches
from fleet.runtime.job import Job, capacity_evidence
from fleet.scenario import Scenario
from fleet.webrtc import IceServer, use_host_addresses

if TYPE_CHECKING:
    import httpx

__all__ = ["RegionRunner", "tester_bottleneck"]

ICE_ADDRESSES_ENV = "FLEET_ICE_ADDRESSES"  # comma-separated host candidate addresses for this node's testers
TESTER_LAG_LIMIT_MS = 20.0   # mean event-loop lag above this during a session: the tester was a bottleneck
TESTER_BUSY_LIMIT = 90.0     # ... or its event loop's thread on the CPU this share of the session (one core)
TESTER_SUSPECT_LIMIT = 0.5   # ... or this share of the output intervals stamped while the loop was stalled
TESTER_SEND_JITTER_FLOOR = 0.05  # a sender's own jitter at or under this is a healthy tester's (its timers fire to
# the millisecond: 0.012 to 0.035 measured at 20 fps in the smoke campaign), whatever a marginal miss it could explain


def tester_bottleneck(row: SessionRow, max_jitter_coeff: float | None = None) -> bool:
    """Could the tester itself explain this session's figures? Its loop lagged or was busy, it stamped most
    output intervals in its own stalls, or (given the session's threshold) the session missed
    ``max_jitter_coeff`` and what is left of its jitter without the tester's own sending's is within it (the
    output can carry the publisher's unevenness; independent spreads add as squares, and an output of every
    k-th frame carries 1/k of it), its sending uneven beyond a healthy tester's (``TESTER_SEND_JITTER_FLOOR``).
    An upper bound: a gateway that re-paces its input carries less of it."""
    lag, busy, sending = row.tester_loop_lag_ms_mean, row.tester_loop_busy_pct, row.tester_send_jitter_coeff
    used, suspect = row.jitter_intervals or 0, row.jitter_suspect_intervals or 0
    jitter = row.jitter_coeff
    if sending is not None and row.frames_sent and row.frames_received is not None:
        carried = sending * min(1.0, row.frames_received / row.frames_sent)  # the output's share of the sending's
    else:
        carried = None
    return bool((lag is not None and lag > TESTER_LAG_LIMIT_MS) or (busy is not None and busy >= TESTER_BUSY_LIMIT)
                or (used + suspect and suspect / (used + suspect) > TESTER_SUSPECT_LIMIT)
                or (max_jitter_coeff is not None and jitter is not None and carried is not None
                    and carried > TESTER_SEND_JITTER_FLOOR and jitter > max_jitter_coeff
                    and jitter ** 2 - carried ** 2 <= max_jitter_coeff ** 2))


class RegionRunner:
    """Wrapped with ``ray.remote`` by the driver; usable directly in tests."""

    def __init__(self, region: str, scenario: dict[str, Any], base_dir: str | None,
                 host_addresses: list[str] | None = None, broker: Any = None) -> None:
        self.region = region
        self.broker = broker  # the campaign's BrokerActor: told how to stop each stream, for a crash
        self.scenario = Scenario.model_validate(scenario)
        self.base_dir = base_dir
        # the tester's ICE host addresses: given for a local run, else a deployment setting of the node
        host_addresses = host_addresses or [a for a in os.environ.get(ICE_ADDRESSES_ENV, "").split(",") if a]
        if host_addresses:
            use_host_addresses(host_addresses)
        self.stops: dict[str, asyncio.Event] = {}
        self.proc = psutil.Process()
        self._started = False
        self._client: httpx.AsyncClient | None = None
        self._metrics: tuple[Any, ...] | None = None

    def pid(self) -> int:
        return os.getpid()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._client = new_http_client(ProbeOptions(verify_tls=self.scenario.target.verify_tls))
            try:
                from ray.util import metrics

                self._metrics = (
                    metrics.Gauge("fleet_sessions_live", "test sessions running", tag_keys=("region",)),
                    metrics.Counter("fleet_sessions_finished", "test sessions finished",
                                    tag_keys=("region", "outcome")),
                    metrics.Histogram("fleet_g2g_latency_ms", "median client glass-to-glass latency per session",
                                      boundaries=[50, 100, 200, 400, 800, 1600, 3200], tag_keys=("region",)),
                )
            except Exception:  # noqa: BLE001 - metrics are optional outside Ray
                self._metrics = None

    def _gauge(self) -> None:
        if self._metrics:
            self._metrics[0].set(len(self.stops), tags={"region": self.region})

    async def warm(self) -> float:
        """Be ready to start sessions at once: the HTTP client exists and the clip is encoded. Returns seconds."""
        t = time.monotonic()
        self._start()
        await self._clip()
        quiet_gc()  # the modules and the clip out of the collector's way: no ~40 ms stalls mid-session
        return time.monotonic() - t

    async def _clip(self) -> Clip:
        """The scenario's clip, encoded once per process (off the loop)."""
        return await asyncio.to_thread(clip_for, self.scenario.media,
                                       None if self.base_dir is None else Path(self.base_dir))

    async def run_session(self, job: Job) -> SessionRow:
        """Run one session: its row (the driver adds the campaign's identity)."""
        self._start()
        s = self.scenario
        token = os.environ.get(s.target.token_env) if s.target.token_env else None
        t = s.workflow.thresholds
        clip = await self._clip()
        spec = ProbeSpec(
            gateway_url=job.gateway_url, dialect=s.target.dialect, pipeline=s.workflow.pipeline,
            clip=clip,
            prompts=job.prompts, duration_s=job.duration_s, max_s=s.load.session.max_s, token=token,
            orchestrator=job.orchestrator_uri, session_id=job.session_id,
            max_startup_s=t.max_startup_s, min_output_fps=t.min_output_fps, max_g2g_latency_ms=t.max_g2g_latency_ms,
            max_jitter_coeff=t.max_jitter_coeff, max_freeze_s=t.max_freeze_s,
            options=self.probe_options(),
            on_stream=self._on_stream(job.lease_id))
        stop = asyncio.Event()
        self.stops[job.session_id] = stop
        self._gauge()
        started, cpu = time.monotonic(), self.proc.cpu_times()
        try:
            result = await run_probe(spec, stop, self._client)
        finally:
            self.stops.pop(job.session_id, None)
            self._gauge()
        now, spent = time.monotonic(), self.proc.cpu_times()
        used = (spent.user - cpu.user) + (spent.system - cpu.system)
        row = SessionRow.measured(
            result, region=self.region, tester_host=os.uname().nodename,
            sketches=session_sketches(result),  # the per-frame latencies cross Ray as sketches and a count
            # the whole process (every session, aiortc's threads) over this session's span, percent of one core
            tester_cpu_pct=round(100 * used / (now - started), 1) if now > started else None)
        row = replace(row, tester_bottleneck=tester_bottleneck(row, spec.max_jitter_coeff),
                      **capacity_evidence(row, job, getattr(self.scenario.target.capacity, "refresh_s", None)))
        if self._metrics:
            self._metrics[1].inc(tags={"region": self.region, "outcome": row.outcome})
            if row.g2g_latency_ms is not None:
                self._metrics[2].observe(row.g2g_latency_ms, tags={"region": self.region})
        return row

    def probe_options(self) -> ProbeOptions:
        """What the scenario sets of how each session runs."""
        s = self.scenario
        return ProbeOptions(verify_tls=s.target.verify_tls, ice_servers=self._ice_servers(),
                            use_gateway_ice_servers=s.target.ice.use_gateway_servers, send_phases=s.media.send_phases,
                            status_every_s=s.target.status_every_s)

    def _ice_servers(self) -> tuple[IceServer, ...]:
        """The scenario's STUN/TURN servers, credentials read from this node's environment."""
        env = os.environ.get
        return tuple(IceServer(i.urls, env(i.username_env) if i.username_env else None,
                               env(i.credential_env) if i.credential_env else None)
                     for i in self.scenario.target.ice.servers)

    def _on_stream(self, lease_id: str | None) -> Any:
        if self.broker is None or not lease_id:
            return None
        return lambda method, url: self.broker.attach.remote(lease_id, method, url)

    async def stop_all(self) -> int:
        """End every live session now (each tears its stream down); returns how many."""
        for stop in self.stops.values():
            stop.set()
        return len(self.stops)

    async def live(self) -> int:
        return len(self.stops)
