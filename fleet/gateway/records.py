"""What a reference-gateway stream reports: the runner's status events (ai_stream_status), go-livepeer's
``gateway_status.ingest_metrics``, the status body the gateway serves, and the truth for tests.

``StreamReports`` is the reporting part a stream holds (``Stream.reports``): it keeps the status maps and
reads what it reports of the stream through ``ReportHost``; the per-frame truth is the runner's
(``fleet.gateway.truth``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

from fleet.gateway.config import GatewayConfig
from fleet.gateway.egress import OutputTrack
from fleet.gateway.ingest import Ingest
from fleet.gateway.network import Lease
from fleet.gateway.rtpclock import VIDEO_CLOCK
from fleet.gateway.runner import RunnerModel

__all__ = ["ReportHost", "StreamReports", "track_stats", "unix_ms"]

def unix_ms(unix: float | None) -> int | None:
    return None if unix is None else int(unix * 1000)


ACCEPTABLE_JITTER_MS = 50       # media/whip_connection.go acceptableJitterMs
ACCEPTABLE_PACKET_LOSS_PCT = 2  # acceptablePacketLossPct


def track_stats(jitter_rtp: float, lost: int, received: int, last_in: float,
                last_out: float) -> tuple[dict[str, Any], str]:
    """One ``track_stats`` entry and the ``conn_quality`` as go-livepeer's ``GetConnectionStats`` writes them:
    ``jitter`` in milliseconds (the receiver's RTP-clock jitter over the clock rate, times 1000), ``rtt``
    always 0 (the gateway sends no media on a WHIP connection, so no receiver report measures one), and a
    warning per threshold crossed."""
    jitter_ms = jitter_rtp / VIDEO_CLOCK * 1000
    loss_pct = 100.0 * lost / (received + lost) if received + lost else 0.0
    warnings = []
    if jitter_ms > ACCEPTABLE_JITTER_MS:
        warnings.append(f"jitter greater than {ACCEPTABLE_JITTER_MS} ms")
    if loss_pct > ACCEPTABLE_PACKET_LOSS_PCT:
        warnings.append(f"packet loss greater than {ACCEPTABLE_PACKET_LOSS_PCT}%")
    track: dict[str, Any] = {
        "type": "video", "jitter": round(jitter_ms, 3), "packets_lost": lost, "packets_received": received,
        "packet_loss_pct": round(loss_pct, 3), "rtt": 0, "last_input_ts": round(last_in, 3),
        "last_output_ts": round(last_out, 3), "latency": round(last_in - last_out, 3)}
    if warnings:
        track["warnings"] = warnings
    return track, "bad" if warnings else "good"


class ReportHost(Protocol):
    """What a stream's reports read of it: who it is, its params, its job and runner, its ingest, its viewers
    and its lifecycle events."""

    config: GatewayConfig
    loop: asyncio.AbstractEventLoop
    t0: float
    id: str
    request_id: str
    pipeline: str
    params: dict[str, Any]
    params_hash: str
    params_update: float | None
    lease: Lease | None
    closed: str | None
    generation: int
    pc: Any
    ingest: Ingest | None
    runner: RunnerModel
    key: str
    name: str
    e2e_test: bool
    t0_unix: float
    closed_unix: float | None
    whep: list[tuple[Any, OutputTrack]]
    prompts: list[tuple[float, str, str]]
    events: deque[tuple[float, str, dict[str, Any]]]

    def unix(self, t: float | None) -> float | None: ...

    def event(self, name: str, **data: Any) -> None: ...


class StreamReports:
    def __init__(self, host: ReportHost, whep_url: str) -> None:
        self.host = host
        self.runner_status: dict[str, Any] | None = None   # the runner's last report (ai_stream_status)
        self.gateway_status: dict[str, Any] = {"whep_url": whep_url}
        # a BYOC stream's status: one flat map, replaced whole by each runner report (None: the live-video dialect)
        self.flat_status: dict[str, Any] | None = None

    def keep_first(self, key: str, value: Any) -> None:
        """go-livepeer's StoreIfNotExists on the stream's gateway status (and a BYOC stream's flat status)."""
        self.gateway_status.setdefault(key, value)
        if self.flat_status is not None:
            self.flat_status.setdefault(key, value)

    def clear(self) -> None:
        """clearStreamDelay after an orchestrator's events ended: the whole status goes (the new runner's
        next report and the next ingest stats bring parts of it back; the WHEP URL does not come back)."""
        self.runner_status = None
        self.gateway_status = {}

    def report_now(self) -> None:
        """The runner's status event (ai_stream_status), as the gateway stores it: beside ``gateway_status``;
        for a BYOC stream it replaces the whole flat status (byoc/trickle.go ``statusStore.Store``)."""
        h, r = self.host, self.host.runner
        assert h.lease is not None
        now = h.loop.time()
        start = r.runner_start if r.runner_start is not None else h.t0
        state = r.state()
        previous = self.runner_status or {}
        o = h.lease.orchestrator
        self.runner_status = {
            "type": "status", "pipeline": h.pipeline, "start_time": unix_ms(h.unix(start)), "state": state,
            "last_state_update_time": (previous.get("last_state_update_time") if previous.get("state") == state
                                       else unix_ms(time.time())),
            "input_status": {"fps": round(r.in_rate.fps(now, start), 2), "last_input_time": unix_ms(h.unix(r.last_in))},
            "inference_status": {
                "fps": round(r.out_rate.fps(now, start), 2), "last_output_time": unix_ms(h.unix(r.last_out)),
                "last_params_update_time": unix_ms(h.unix(h.params_update)), "last_params": h.params,
                "last_params_hash": h.params_hash,
                "last_error": r.last_error[0] if r.last_error else None,
                "last_error_time": unix_ms(h.unix(r.last_error[1])) if r.last_error else None,
                "last_restart_time": unix_ms(h.unix(r.last_restart)), "restart_count": r.restart_count},
            "stream_id": h.id, "request_id": h.request_id, "pipeline_id": "",
            "orchestrator_info": {"address": o.address, "url": o.uri},
            "timestamp": unix_ms(time.time()),
        }
        if self.flat_status is not None:
            self.flat_status = dict(self.runner_status)
        h.event("ai_stream_status", state=state)

    async def report(self, generation: int) -> None:
        """The runner reports every ``status_interval_s`` (ai-runner status_report_interval), the first time
        one interval after its start; until then the status shows what was there (after a swap: the old
        runner's last report)."""
        h = self.host
        while True:
            await asyncio.sleep(h.config.status_interval_s)
            if h.closed or generation != h.generation:
                return
            self.report_now()

    async def stats(self) -> None:
        """``gateway_status.ingest_metrics`` every ``stats_interval_s`` (go-livepeer runStats)."""
        h = self.host
        while not h.closed:
            await asyncio.sleep(h.config.stats_interval_s)
            if not h.closed:
                await self._ingest_metrics()

    async def _ingest_metrics(self) -> None:
        h = self.host
        stats = await h.pc.getStats()
        transport = next((s for s in stats.values() if s.type == "transport"), None)
        inbound = next((s for s in stats.values() if s.type == "inbound-rtp"), None)
        ingest = h.ingest
        received = ingest.packets if ingest else 0
        lost = ingest.packets_lost if ingest else 0
        last_in, last_out = h.runner.last_in_pts or 0.0, h.runner.last_out_pts or 0.0
        track, quality = track_stats(inbound.jitter if inbound is not None else 0, lost, received, last_in, last_out)
        self.gateway_status["ingest_metrics"] = metrics = {"stats": {
            "peer_conn_stats": {"ID": transport.id if transport else "",
                                "BytesReceived": getattr(transport, "bytesReceived", 0) if transport else 0,
                                "BytesSent": getattr(transport, "bytesSent", 0) if transport else 0},
            "track_stats": [track], "conn_quality": quality}}
        if self.flat_status is not None:  # BYOC runStats: StoreKey(streamID, "ingest_metrics", …), top level
            self.flat_status["ingest_metrics"] = metrics

    def status(self) -> dict[str, Any]:
        """``GET /live/video-to-video/{streamId}/status``: the runner's last report plus ``gateway_status``."""
        body = dict(self.runner_status) if self.runner_status else {}
        body["gateway_status"] = dict(self.gateway_status)
        if self.host.runner.active("malformed_status"):  # a gateway bug, for the tester to report as the gateway's
            body["inference_status"] = "unavailable"
            body["gateway_status"]["ingest_metrics"] = [body["gateway_status"].get("ingest_metrics")]
        return body

    def byoc_status(self) -> dict[str, Any]:
        """``GET /process/stream/{id}/status`` (byoc/stream_gateway.go ``StreamStatus``): the flat map as stored:
        ``whep_url``, ``orchestrator``, ``ingest_metrics``, ``error`` at the top level until the runner's first
        report replaces it; after each report its fields, and what was stored since."""
        return dict(self.flat_status or {})

    # --- truth --------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The stream as ``/debug/streams`` lists it."""
        h = self.host
        lease, r = h.lease, h.runner
        return {"id": h.key, "name": h.name, "stream_id": h.id, "request_id": h.request_id,
                "open": h.closed is None, "closed_reason": h.closed, "state": r.state(),
                "pipeline": h.pipeline, "orchestrator": lease.orchestrator.address if lease else None,
                "orchestrator_url": lease.orchestrator.uri if lease else None, "gpu": lease.gpu_id if lease else None,
                "error": (self.gateway_status.get("error") or {}).get("error_message"),
                "e2e_test": h.e2e_test, "started_unix": round(h.t0_unix, 3), "closed_unix": h.closed_unix,
                "frames_in": r.frames_in, "frames_out": r.frames_out, "dropped": dict(r.dropped),
                "arrival_misses": r.arrival_misses,
                "whep_subscribers": len(h.whep),
                "viewers": [{"frames_sent": t.frames_sent, "dropped_awaiting_keyframe": t.awaiting_keyframe,
                             "packets_sent": t.packets_sent, "packets_dropped": t.packets_dropped,
                             "packets_lost": len(t.undelivered)}
                            for _, t in h.whep]}

    def truth(self) -> dict[str, Any]:
        """The stream's ground truth (``/debug/streams/{key}``): the summary, its settings, its events and the
        truth of every frame (``fleet.gateway.truth``) and of its delivery to each viewer."""
        h = self.host
        frames = h.runner.truth.summary()
        return {
            **self.summary(),
            "config_delay": h.lease.profile.delay.model_dump() if h.lease else None,
            "config_cold_start_s": h.lease.profile.cold_start_s if h.lease else None,
            "fps_cap": round(h.runner.fps_cap(), 3),
            "delay_ms_median": frames["delay_ms_median"], "delay_drawn_ms_median": frames["delay_drawn_ms_median"],
            "residence_ms_median": frames["residence_ms_median"],
            "prompts": [{"t": t, "prompt": p, "params_hash": ph} for t, p, ph in h.prompts],
            "events": [{"t": t, "type": k, **d} for t, k, d in h.events],  # data keys never 't'/'type'
            "frames": frames["frames"],
            "pts_origin": h.runner.pts_origin(),  # the publisher's RTP timestamp of a frame's pts 0
            # per viewer, per frame sent: [output pts (90 kHz), when its last packet left (time.monotonic())]
            "egress": [[[p, round(t, 6)] for p, t in track.egress] for _, track in h.whep],
        }
