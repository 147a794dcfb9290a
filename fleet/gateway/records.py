"""What a reference-gateway stream reports: the runner's status events (ai_stream_status), go-livepeer's
``gateway_status.ingest_metrics``, the status body the gateway serves, and the truth for tests.

``StreamRecords`` is the reporting part of ``fleet.gateway.stream.Stream`` (a mixin over the state
declared in ``fleet.gateway.state``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fleet.gateway.runner_state import COMFYUI_RELOAD_ERROR_S, RELOAD_ERROR_S, RunnerClock, runner_state
from fleet.gateway.state import StreamState
from fleet.rtp import VIDEO_CLOCK



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


class StreamRecords(StreamState):
    def state(self) -> str:
        now = self.loop.time()
        start = self.runner_start if self.runner_start is not None else self.t0
        ready = self.ready_at if self.ready_at is not None and now >= self.ready_at else None
        return runner_state(RunnerClock(
            now=now, start=start, ready=ready, running=self.closed is None, last_input=self.last_in,
            last_output=self.last_out, params_update=self.params_update,
            last_error=self.last_error[1] if self.last_error else None, last_restart=self.last_restart,
            input_fps=self.in_rate.fps(now, start), output_fps=self.out_rate.fps(now, start),
            reload_error_s=COMFYUI_RELOAD_ERROR_S if self.pipeline == "comfyui" else RELOAD_ERROR_S))

    def keep_first(self, key: str, value: Any) -> None:
        """go-livepeer's StoreIfNotExists on the stream's gateway status (and a BYOC stream's flat status)."""
        self.gateway_status.setdefault(key, value)
        if self.flat_status is not None:
            self.flat_status.setdefault(key, value)

    def _report_now(self) -> None:
        """The runner's status event (ai_stream_status), as the gateway stores it: beside ``gateway_status``;
        for a BYOC stream it replaces the whole flat status (byoc/trickle.go ``statusStore.Store``)."""
        assert self.lease is not None
        now = self.loop.time()
        start = self.runner_start if self.runner_start is not None else self.t0
        state = self.state()
        previous = self.runner_status or {}
        o = self.lease.orchestrator
        self.runner_status = {
            "type": "status", "pipeline": self.pipeline, "start_time": unix_ms(self.unix(start)), "state": state,
            "last_state_update_time": (previous.get("last_state_update_time") if previous.get("state") == state
                                       else unix_ms(time.time())),
            "input_status": {"fps": round(self.in_rate.fps(now, start), 2), "last_input_time": unix_ms(self.unix(self.last_in))},
            "inference_status": {
                "fps": round(self.out_rate.fps(now, start), 2), "last_output_time": unix_ms(self.unix(self.last_out)),
                "last_params_update_time": unix_ms(self.unix(self.params_update)), "last_params": self.params,
                "last_params_hash": self.params_hash,
                "last_error": self.last_error[0] if self.last_error else None,
                "last_error_time": unix_ms(self.unix(self.last_error[1])) if self.last_error else None,
                "last_restart_time": unix_ms(self.unix(self.last_restart)), "restart_count": self.restart_count},
            "stream_id": self.id, "request_id": self.request_id, "pipeline_id": "",
            "orchestrator_info": {"address": o.address, "url": o.uri},
            "timestamp": unix_ms(time.time()),
        }
        if self.flat_status is not None:
            self.flat_status = dict(self.runner_status)
        self.event("ai_stream_status", state=state)

    async def _report(self, generation: int) -> None:
        """The runner reports every ``status_interval_s`` (ai-runner status_report_interval), the first time
        one interval after its start; until then the status shows what was there (after a swap: the old
        runner's last report)."""
        while True:
            await asyncio.sleep(self.gw.config.status_interval_s)
            if self.closed or generation != self.generation:
                return
            self._report_now()

    async def _stats(self) -> None:
        """``gateway_status.ingest_metrics`` every ``stats_interval_s`` (go-livepeer runStats)."""
        while not self.closed:
            await asyncio.sleep(self.gw.config.stats_interval_s)
            if not self.closed:
                await self._ingest_metrics()

    async def _ingest_metrics(self) -> None:
        stats = await self.pc.getStats()
        transport = next((s for s in stats.values() if s.type == "transport"), None)
        inbound = next((s for s in stats.values() if s.type == "inbound-rtp"), None)
        tap = self.tap
        received = tap.packets if tap else 0
        lost = tap.packets_lost if tap else 0
        last_in, last_out = self.last_in_pts or 0.0, self.last_out_pts or 0.0
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
        if self._active("malformed_status"):  # a gateway bug, for the tester to report as the gateway's
            body["inference_status"] = "unavailable"
            body["gateway_status"]["ingest_metrics"] = [body["gateway_status"].get("ingest_metrics")]
        return body

    def byoc_status(self) -> dict[str, Any]:
        """``GET /process/stream/{id}/status`` (byoc/stream_gateway.go ``StreamStatus``): the flat map as stored:
        ``whep_url``, ``orchestrator``, ``ingest_metrics``, ``error`` at the top level until the runner's first
        report replaces it; after each report its fields, and what was stored since."""
        return dict(self.flat_status or {})

    def summary(self) -> dict[str, Any]:
        lease = self.lease
        return {"id": self.key, "name": self.name, "stream_id": self.id, "request_id": self.request_id,
                "open": self.closed is None, "closed_reason": self.closed, "state": self.state(),
                "pipeline": self.pipeline, "orchestrator": lease.orchestrator.address if lease else None,
                "orchestrator_url": lease.orchestrator.uri if lease else None, "gpu": lease.gpu_id if lease else None,
                "error": (self.gateway_status.get("error") or {}).get("error_message"), "e2e_test": self.e2e_test,
                "started_unix": round(self.t0_unix, 3), "closed_unix": self.closed_unix,
                "frames_in": self.frames_in, "frames_out": self.frames_out, "dropped": dict(self.dropped),
                "arrival_misses": self.arrival_misses,
                "whep_subscribers": len(self.whep),
                "viewers": [{"frames_sent": t.frames_sent, "dropped_awaiting_keyframe": t.awaiting_keyframe,
                             "packets_sent": t.packets_sent, "packets_dropped": t.packets_dropped,
                             "packets_lost": len(t.undelivered)}
                            for _, t in self.whep]}

    def truth(self) -> dict[str, Any]:
        delays = sorted(f[4] for f in self.frames if f[4] is not None)
        residence = sorted(f[6] for f in self.frames if f[6] is not None)
        drawn = sorted(f[3] for f in self.frames if f[3] is not None)
        return {
            **self.summary(),
            "config_delay": self.lease.profile.delay.model_dump() if self.lease else None,
            "config_cold_start_s": self.lease.profile.cold_start_s if self.lease else None,
            "fps_cap": round(self.fps_cap(), 3),
            "delay_ms_median": _middle(delays), "delay_drawn_ms_median": _middle(drawn),
            "residence_ms_median": _middle(residence),
            "prompts": [{"t": t, "prompt": p, "params_hash": h} for t, p, h in self.prompts],
            "events": [{"t": t, "type": k, **d} for t, k, d in self.events],  # data keys never 't'/'type'
            "frames": [{"seq": s, "pts": p, "t_in": t, "queued_ms": q, "delay_drawn_ms": dr, "delay_ms": da,
                        "dropped": r, "residence_ms": rs} for s, p, t, dr, da, r, rs, q in self.frames],
            # per viewer, per frame sent: [output pts (90 kHz), when its last packet left (time.monotonic())]
            "egress": [[[p, round(t, 6)] for p, t in track.egress] for _, track in self.whep],
        }


def _middle(xs: list[float]) -> float | None:
    """The upper median of sorted values."""
    return xs[len(xs) // 2] if xs else None
