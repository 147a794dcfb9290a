"""One stream through the reference gateway: ingest, processing, egress, ground truth.

Frames arrive over WHIP (aiortc decodes them), pass the simulated runner
(cold start, warm-up, output fps cap, prompt look, processing delay with
jitter, faults) and go to every WHEP subscriber at ``receive time + delay``,
with their input timestamps. Everything the runner did to each frame is
kept as ground truth for tests: the delay it applied (drawn and actual), the
frames it dropped and why, the prompt in force, and the stream's lifecycle.
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from fleet.gateway.config import Fault
from fleet.gateway.network import Lease
from fleet.gateway.transform import apply_look, look_for, prompt_cost
from fleet.rtp import VIDEO_CLOCK, FrameTap, TapFrame
from fleet.webrtc import new_peer_connection

if TYPE_CHECKING:
    from fleet.gateway.server import ReferenceGateway

__all__ = ["OutputTrack", "Stream"]

log = logging.getLogger(__name__)

ARRIVALS_KEPT = 512            # arrival times of frames still in aiortc's decoder
SUBSCRIBER_QUEUE = 90          # frames buffered per WHEP subscriber before the oldest is dropped
MAX_TRUTH_FRAMES = 108_000     # per-frame truth kept (an hour at 30 fps); summaries are always kept
STATUS_WINDOW_S = 2.0          # fps in status is measured over this window
DEGRADED_INPUT_FPS = 15.0      # as ai-runner: input fps below this, or no input for 2 s
NO_INPUT_S = 2.0
NO_OUTPUT_S = 5.0
FPS_BURST_S = 0.25             # the fps cap's token bucket holds this much output: bursty input within it passes


def _log_crash(task: asyncio.Task) -> None:
    """A stream's background task died of a bug: say so loudly (faults are not exceptions)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("stream task crashed", exc_info=task.exception())


class OutputTrack(MediaStreamTrack):
    """What one WHEP subscriber receives: the stream's processed frames."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.VideoFrame | av.Packet | None] = asyncio.Queue()
        self.first_pts90: list[int] = []  # the RTP-clock pts of the first frame handed to the sender

    def push(self, frame: av.VideoFrame | av.Packet | None) -> None:
        if self.queue.qsize() >= SUBSCRIBER_QUEUE:
            self.queue.get_nowait()
        self.queue.put_nowait(frame)

    async def recv(self) -> av.VideoFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self.queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        if not self.first_pts90 and frame.pts is not None and frame.time_base is not None:
            self.first_pts90.append(round(frame.pts * frame.time_base * VIDEO_CLOCK))
        return frame


@dataclass
class _Rate:
    """Events per second over a sliding window."""

    window: float = STATUS_WINDOW_S
    times: deque = field(default_factory=deque)

    def add(self, t: float) -> None:
        self.times.append(t)
        while self.times and self.times[0] < t - self.window:
            self.times.popleft()

    def fps(self, now: float) -> float:
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        return len(self.times) / self.window


class Stream:
    def __init__(self, gateway: ReferenceGateway, stream_id: str, name: str, pipeline: str,
                 params: dict[str, Any], lease: Lease, faults: list[Fault]) -> None:
        self.gw = gateway
        self.id = stream_id
        self.name = name
        self.request_id = hashlib.sha1(stream_id.encode()).hexdigest()[:8]
        self.pipeline = pipeline
        self.lease = lease
        self.faults = faults
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.t0_unix = time.time()
        self.rng = random.Random(f"{gateway.config.seed}:{stream_id}")
        self.pc = new_peer_connection()
        self.whep: list[tuple[Any, OutputTrack]] = []
        self.params: dict[str, Any] = {}
        self.prompt = ""
        self.closed: str | None = None  # the reason, once closed
        self.closed_unix: float | None = None
        self.restart_count = 0
        self.last_error: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: dict[str, int] = {}
        # [seq, pts, t_in, delay_drawn_ms, delay_actual_ms | None, dropped reason, residence_ms | None]
        self.frames: list[list] = []
        self.unsent: dict[int, int] = {}  # output RTP-clock pts -> truth index, until its packets leave
        self.prompts: list[tuple[float, str, str]] = []  # (t, prompt, params hash)
        self.events: list[tuple[float, str, dict]] = []
        self.in_rate, self.out_rate = _Rate(), _Rate()
        self.last_in: float | None = None
        self.last_out: float | None = None
        self.last_due = 0.0
        self.fps_credit: float | None = None  # full at the first frame
        self.last_in_for_cap: float | None = None
        self.ready_at = self.t0 + (lease.profile.cold_start_s if lease.cold_start else 0.0)
        self.warmup_left = lease.profile.warmup_frames
        self._tasks: list[asyncio.Task] = []
        self.arrivals: dict[int, float] = {}  # RTP timestamp -> arrival of the frame's last packet
        self.relay_queue: asyncio.Queue[TapFrame] = asyncio.Queue()
        self.relay_ts0: int | None = None
        self.relay_need_key = True
        self.tap: FrameTap | None = None
        self._closing: asyncio.Task | None = None
        self.set_params(params, event=False)
        self.event("gateway_receive_stream_request", pipeline=pipeline, orchestrator=lease.orchestrator.address,
                   gpu=lease.gpu_id, cold_start=lease.cold_start, faults=[f.kind for f in faults])

    # --- time and records ---------------------------------------------------

    def now(self) -> float:
        return self.loop.time() - self.t0

    def event(self, name: str, **data: Any) -> None:
        self.events.append((round(self.now(), 6), name, data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    def _active(self, kind: str) -> Fault | None:
        t = self.now()
        for f in self.faults:
            if f.kind == kind and t >= f.after_s and (f.duration_s is None or t < f.after_s + f.duration_s):
                return f
        return None

    def set_params(self, params: dict[str, Any], event: bool = True) -> None:
        self.params = params
        self.prompt = str(params.get("prompt", ""))
        self.look = look_for(self.prompt)
        self.lut = self.look.lut()
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        self.params_hash = digest
        self.prompts.append((round(self.now(), 6), self.prompt, digest))
        if event:
            self.event("params_update", params_hash=digest)

    def fps_cap(self) -> float:
        cap = self.lease.profile.fps_cap * (1 - self.lease.profile.prompt_cost * prompt_cost(self.prompt))
        fault = self._active("fps_drop")
        return cap * (fault.fps_factor if fault else 1.0)

    def _draw_delay(self) -> float:
        d = self.lease.profile.delay
        if d.dist == "fixed":
            ms = d.mean_ms
        elif d.dist == "uniform":
            ms = self.rng.uniform(d.mean_ms - d.jitter_ms, d.mean_ms + d.jitter_ms)
        else:
            ms = self.rng.gauss(d.mean_ms, d.jitter_ms)
        return max(0.0, ms) / 1000.0

    # --- signaling -------------------------------------------------------------

    async def answer_whip(self, offer_sdp: str) -> str:
        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self.gw.config.relay:
                self._spawn(self._pump(track))

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = self.pc.connectionState
            self.event("ingest_connection", state=state)
            if state in ("failed", "closed") and not self.closed:
                self.close_soon(f"ingest {state}")

        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        receivers = [t.receiver for t in self.pc.getTransceivers() if t.kind == "video"]
        if receivers:
            relay = self.gw.config.relay
            self.tap = FrameTap(receivers[0], self._on_tap_frame, decode=not relay)
            if relay:
                self._spawn(self._pump_relay())
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._spawn(self._watch())
        return self.pc.localDescription.sdp

    async def answer_whep(self, offer_sdp: str) -> str:
        pc = new_peer_connection()
        track = OutputTrack()
        self.whep.append((pc, track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                track.push(None)
                await pc.close()

        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        sender = pc.addTrack(track)
        if len(self.whep) == 1:
            self._time_egress(sender, track)
        await pc.setLocalDescription(await pc.createAnswer())
        self.event("whep_subscriber", count=len(self.whep))
        return pc.localDescription.sdp

    def _time_egress(self, sender: Any, track: OutputTrack) -> None:
        """Truth of the whole residence: when each frame's last packet left for the first subscriber."""
        dtls = sender.transport
        original = dtls._send_rtp
        origin: list[int] = []

        async def send_rtp(data: bytes) -> None:
            await original(data)
            if len(data) < 12 or not data[1] & 0x80 or (data[1] & 0x7F) < 96:
                return  # RTCP, or not the last packet of a frame
            ts = int.from_bytes(data[4:8], "big")
            if not origin:
                if not track.first_pts90:
                    return
                origin.append(ts - track.first_pts90[0])
            index = self.unsent.pop((ts - origin[0]) & 0xFFFFFFFF, None)
            if index is not None and index < len(self.frames):
                t_in = self.t0 + self.frames[index][2]
                self.frames[index][6] = round((self.loop.time() - t_in) * 1000, 3)

        dtls._send_rtp = send_rtp

    # --- the runner ----------------------------------------------------------------

    async def _pump(self, track: MediaStreamTrack) -> None:
        idle = self.gw.config.idle_timeout_s
        seq = 0
        while not self.closed:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout=idle)
            except asyncio.TimeoutError:
                self.close_soon(f"no input for {idle:g} s")
                return
            except MediaStreamError:
                self.close_soon("input ended")
                return
            seq += 1
            self._ingest(frame, seq, self._arrival_of(track, frame))

    def _on_tap_frame(self, frame: TapFrame) -> None:
        if self.gw.config.relay:
            self.relay_queue.put_nowait(frame)
            return
        if len(self.arrivals) >= ARRIVALS_KEPT:
            self.arrivals.pop(next(iter(self.arrivals)))
        self.arrivals[frame.timestamp & 0xFFFFFFFF] = frame.arrival

    def _arrival_of(self, track: MediaStreamTrack, frame: av.VideoFrame) -> float:
        """When the frame's last packet arrived (before aiortc's jitter buffer and decoder), else now."""
        receiver = self.tap.receiver if self.tap else None
        mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        if origin is None or frame.pts is None:
            return self.loop.time()
        return self.arrivals.pop((frame.pts + origin) & 0xFFFFFFFF, self.loop.time())

    async def _pump_relay(self) -> None:
        """Relay mode: encoded frames from the tap, forwarded without decoding."""
        idle = self.gw.config.idle_timeout_s
        seq = 0
        while not self.closed:
            try:
                tap = await asyncio.wait_for(self.relay_queue.get(), timeout=idle)
            except asyncio.TimeoutError:
                self.close_soon(f"no input for {idle:g} s")
                return
            if self.relay_ts0 is None:
                self.relay_ts0 = tap.timestamp
            packet = av.Packet(tap.data)
            packet.pts = tap.timestamp - self.relay_ts0
            packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            seq += 1
            self._ingest(packet, seq, tap.arrival, keyframe=tap.keyframe and tap.complete)

    def _drop_reason(self, t_in: float) -> str | None:
        if t_in < self.ready_at:
            return "cold_start"
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return "warmup"
        if self._active("output_stall"):
            return "fault:output_stall"
        cap = self.fps_cap()
        burst = max(1.5, cap * FPS_BURST_S)
        if self.fps_credit is None:
            self.fps_credit = burst
        elif self.last_in_for_cap is not None:
            self.fps_credit = min(burst, self.fps_credit + (t_in - self.last_in_for_cap) * cap)
        self.last_in_for_cap = t_in
        if self.fps_credit < 1.0 - 1e-6:
            return "fps_cap"
        self.fps_credit -= 1.0
        return None

    def _ingest(self, frame: av.VideoFrame | av.Packet, seq: int, t_in: float, keyframe: bool = False) -> None:
        self.frames_in += 1
        self.in_rate.add(t_in)
        if self.last_in is None:
            self.event("runner_receive_first_ingest_segment")
        self.last_in = t_in
        reason = self._drop_reason(t_in)
        relay = self.gw.config.relay
        if relay and not reason and self.relay_need_key and not keyframe:
            reason = "relay_await_keyframe"  # an encoded stream resumes at a keyframe, or decoders break
        if reason:
            self.relay_need_key = True
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            self._truth(seq, frame.pts, t_in, None, None, reason)
            return
        self.relay_need_key = False
        if relay:
            out = frame
        else:
            out = apply_look(frame, self.look, self.lut, black=self._active("black_frames") is not None)
        delay = self._draw_delay()
        due = max(t_in + delay, self.last_due)
        self.last_due = due
        index = self._truth(seq, frame.pts, t_in, delay * 1000, None, None)
        self.loop.call_at(due, self._emit, out, t_in, index)

    def _truth(self, seq: int, pts: int | None, t_in: float, drawn: float | None, actual: float | None,
               reason: str | None) -> int:
        if len(self.frames) >= MAX_TRUTH_FRAMES:
            return -1
        self.frames.append([seq, pts, round(t_in - self.t0, 6), drawn, actual, reason, None])
        return len(self.frames) - 1

    def _emit(self, frame: av.VideoFrame | av.Packet, t_in: float, index: int) -> None:
        if self.closed:
            return
        t = self.loop.time()
        if index >= 0:
            self.frames[index][4] = round((t - t_in) * 1000, 3)
            if self.whep and frame.pts is not None and frame.time_base is not None:
                pts90 = round(frame.pts * frame.time_base * VIDEO_CLOCK)
                if len(self.unsent) >= ARRIVALS_KEPT:
                    self.unsent.pop(next(iter(self.unsent)))
                self.unsent[pts90] = index
        if self.frames_out == 0:
            self.event("runner_send_first_processed_segment")
        self.frames_out += 1
        self.out_rate.add(t)
        self.last_out = t
        for _, track in self.whep:
            track.push(frame)

    async def _watch(self) -> None:
        """Mid-stream faults on a schedule: disconnect, orchestrator swap, capacity drop."""
        timed = sorted((f for f in self.faults if f.kind in ("disconnect", "orchestrator_swap", "capacity_drop")),
                       key=lambda f: f.after_s)
        for f in timed:
            await asyncio.sleep(max(0.0, f.after_s - self.now()))
            if self.closed:
                return
            self.event("fault", kind=f.kind)
            if f.kind == "disconnect":
                self.last_error = "orchestrator disconnected"
                self.close_soon("fault: disconnect")
                return
            if f.kind == "orchestrator_swap":
                self.gw.swap(self)
            else:
                self.gw.network.drop_capacity(self.lease.orchestrator.address, f.slots)
                if f.duration_s is not None:
                    self.loop.call_later(f.duration_s, self.gw.network.restore_capacity,
                                         self.lease.orchestrator.address, f.slots)

    # --- status, truth ------------------------------------------------------------------

    def state(self) -> str:
        if self.closed:
            return "OFFLINE"
        now = self.loop.time()
        if self.last_error:
            return "ERROR"
        if self.frames_out == 0:
            return "INITIALIZING"
        in_fps, out_fps = self.in_rate.fps(now), self.out_rate.fps(now)
        if self.last_in is None or now - self.last_in > NO_INPUT_S or in_fps < DEGRADED_INPUT_FPS:
            return "DEGRADED_INPUT"
        if self.last_out is None or now - self.last_out > NO_OUTPUT_S or out_fps < min(10.0, 0.8 * in_fps):
            return "DEGRADED_INFERENCE"
        return "ONLINE"

    def status(self) -> dict[str, Any]:
        now = self.loop.time()
        unix = lambda t: None if t is None else round(self.t0_unix + (t - self.t0), 3)  # noqa: E731
        o = self.lease.orchestrator
        return {
            "stream_id": self.id, "request_id": self.request_id, "pipeline_id": self.pipeline,
            "pipeline": self.pipeline, "state": self.state(),
            "input_status": {"fps": round(self.in_rate.fps(now), 2), "last_input_time": unix(self.last_in)},
            "inference_status": {"fps": round(self.out_rate.fps(now), 2), "last_output_time": unix(self.last_out),
                                 "last_params": self.params, "last_params_hash": self.params_hash,
                                 "last_error": self.last_error, "restart_count": self.restart_count},
            "orchestrator_info": {"address": o.address, "url": o.uri,  # gpu: an extension go-livepeer lacks
                                  "gpu": {"id": self.lease.gpu_id, "name": self.lease.gpu_name}},
            "gateway_status": {"whep_url": self.gw.whep_url(self.name),
                               "ingest_metrics": {"stats": {"frames_received": self.frames_in}}},
        }

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "open": self.closed is None, "closed_reason": self.closed,
                "state": self.state(), "pipeline": self.pipeline,
                "orchestrator": self.lease.orchestrator.address, "gpu": self.lease.gpu_id,
                "started_unix": round(self.t0_unix, 3), "closed_unix": self.closed_unix, "frames_in": self.frames_in, "frames_out": self.frames_out,
                "dropped": dict(self.dropped), "whep_subscribers": len(self.whep)}

    def truth(self) -> dict[str, Any]:
        delays = sorted(f[4] for f in self.frames if f[4] is not None)
        residence = sorted(f[6] for f in self.frames if f[6] is not None)
        drawn = sorted(f[3] for f in self.frames if f[3] is not None)
        mid = lambda xs: xs[len(xs) // 2] if xs else None  # noqa: E731
        return {
            **self.summary(),
            "config_delay": self.lease.profile.delay.model_dump(),
            "fps_cap": round(self.fps_cap(), 3),
            "delay_ms_median": mid(delays), "delay_drawn_ms_median": mid(drawn),
            "residence_ms_median": mid(residence),
            "prompts": [{"t": t, "prompt": p, "params_hash": h} for t, p, h in self.prompts],
            "events": [{"t": t, "type": k, **d} for t, k, d in self.events],  # data keys never 't'/'type'
            "frames": [{"seq": s, "pts": p, "t_in": t, "delay_drawn_ms": dr, "delay_ms": da, "dropped": r,
                        "residence_ms": rs} for s, p, t, dr, da, r, rs in self.frames],
        }

    # --- teardown ------------------------------------------------------------------

    def close_soon(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.close(reason))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self.closed_unix = round(time.time(), 3)
        self.event("gateway_ingest_stream_closed", reason=reason)
        self.gw.released(self)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for pc, track in self.whep:
            track.push(None)
            await pc.close()
        await self.pc.close()
