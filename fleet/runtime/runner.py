"""A regional runner: one async Ray actor running many probe sessions in one event loop.

It is placed by a ``region:<name>`` resource (see cluster.yaml), builds each
session's probe from a small job description (the media clip is encoded
once per process), and reports its own health (event-loop lag, CPU) with
every result so a campaign whose tester was the bottleneck is marked so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import psutil

from fleet.media import Clip, clip_for
from fleet.probe.session import ProbeOptions, ProbeSpec, PromptChange, new_http_client, run_probe
from fleet.scenario import Scenario
from fleet.webrtc import IceServer, use_host_addresses

__all__ = ["RegionRunner", "LAG_EVERY_S"]

LAG_EVERY_S = 0.25
ICE_ADDRESSES_ENV = "FLEET_ICE_ADDRESSES"  # comma-separated host candidate addresses for this node's testers
TESTER_LAG_LIMIT_MS = 20.0   # mean event-loop lag above this during a session: the tester was a bottleneck
TESTER_CPU_LIMIT = 90.0


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
        self.lags: deque[tuple[float, float]] = deque(maxlen=4 * 3600)
        self.proc = psutil.Process()
        self.proc.cpu_percent()
        self._monitor: asyncio.Task | None = None
        self._client = None
        self._metrics = None

    def pid(self) -> int:
        return os.getpid()

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_EVERY_S)
            self.lags.append((time.monotonic(), max(0.0, loop.time() - t - LAG_EVERY_S) * 1000))

    def _start(self) -> None:
        if self._monitor is None:
            self._monitor = asyncio.ensure_future(self._watch_lag())
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
        """Be ready to start sessions at once: the loop monitor runs and the clip is encoded. Returns seconds."""
        t = time.monotonic()
        self._start()
        await self._clip()
        return time.monotonic() - t

    async def _clip(self) -> Clip:
        """The scenario's clip, encoded once per process (off the loop)."""
        return await asyncio.to_thread(clip_for, self.scenario.media,
                                       None if self.base_dir is None else Path(self.base_dir))

    async def run_session(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one session; ``job`` has gateway_url, session_id, duration_s, prompts, orchestrator, lease_id."""
        self._start()
        s = self.scenario
        token = os.environ.get(s.target.token_env) if s.target.token_env else None
        t = s.workflow.thresholds
        clip = await self._clip()
        spec = ProbeSpec(
            gateway_url=job["gateway_url"], dialect=s.target.dialect, pipeline=s.workflow.pipeline,
            clip=clip,
            prompts=tuple(PromptChange(p["at_s"], p["params"], p["prompt_id"], p["category"]) for p in job["prompts"]),
            duration_s=job["duration_s"], max_s=s.load.session.max_s, token=token,
            orchestrator=job.get("orchestrator_uri"), session_id=job["session_id"],
            max_startup_s=t.max_startup_s, min_output_fps=t.min_output_fps, max_g2g_latency_ms=t.max_g2g_latency_ms,
            max_jitter_coeff=t.max_jitter_coeff, max_freeze_s=t.max_freeze_s,
            options=ProbeOptions(verify_tls=s.target.verify_tls, ice_servers=self._ice_servers(),
                                 use_gateway_ice_servers=s.target.ice.use_gateway_servers),
            on_stream=self._on_stream(job.get("lease_id")))
        stop = asyncio.Event()
        self.stops[job["session_id"]] = stop
        self._gauge()
        started = time.monotonic()
        try:
            result = await run_probe(spec, stop, self._client)
        finally:
            self.stops.pop(job["session_id"], None)
            self._gauge()
        row = result.to_dict()
        lags = [lag for t_, lag in self.lags if t_ >= started]
        row["tester_loop_lag_ms_max"] = round(max(lags), 3) if lags else None
        row["tester_loop_lag_ms_mean"] = round(sum(lags) / len(lags), 3) if lags else None
        row["tester_cpu_pct"] = round(self.proc.cpu_percent(), 1)
        row["tester_bottleneck"] = bool((lags and sum(lags) / len(lags) > TESTER_LAG_LIMIT_MS)
                                        or row["tester_cpu_pct"] > TESTER_CPU_LIMIT * (psutil.cpu_count() or 1))
        row["region"] = self.region
        row["tester_host"] = os.uname().nodename
        if self._metrics:
            self._metrics[1].inc(tags={"region": self.region, "outcome": row["outcome"]})
            if row["g2g_latency_ms"] is not None:
                self._metrics[2].observe(row["g2g_latency_ms"], tags={"region": self.region})
        return row

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
