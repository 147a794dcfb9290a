"""The simulated ai-runner of one reference-gateway stream: what happens to each input frame.

Frames arrive (decoded by aiortc, or, in relay mode, as the publisher encoded them), wait for the ingest
buffer, and meet the runner: cold start, warm-up, its one-frame input queue at the GPU's fps cap
(ai-runner process.py drops a frame that finds the queue full), a processing delay drawn from the
orchestrator's profile, the prompt's look, and the faults the network configured. Every decision is
kept per frame as ground truth (``truth``, a ``fleet.gateway.truth.FrameTruth``), which the tests compare
the fleet's measurements with.

``RunnerModel`` is a part the stream holds (``Stream.runner``); what it needs of the stream is
``RunnerHost``.
"""

from __future__ import annotations

import asyncio
import fractions
import random
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fleet.gateway.config import Fault, GatewayConfig
from fleet.gateway.egress import SUBSCRIBER_QUEUE, H264Encoder
from fleet.gateway.ingest import InFrame, Ingest
from fleet.gateway.network import Lease, Network
from fleet.gateway.rtpclock import VIDEO_CLOCK
from fleet.gateway.runner_state import (COMFYUI_RELOAD_ERROR_S, RELOAD_ERROR_S, Rate, RunnerClock, max_framerate,
                                        runner_state)
from fleet.gateway.transform import Look, apply_look, prompt_cost
from fleet.gateway.truth import FrameTruth
from fleet.webrtc import timestamp_origin

__all__ = ["CONTROL_LOST", "EOS", "RunnerHost", "RunnerModel", "max_framerate"]

ARRIVALS_KEPT = 512            # arrival times of frames still in aiortc's decoder
TIMED_FAULTS = ("disconnect", "orchestrator_swap", "capacity_drop", "transient_error")
# server/ai_live_video.go: the trickle publisher found no next segment handle; the segment is dropped, the stream goes on
MISSING_HANDLE = "Missing next handle: segment writer closed"
GUARD_EVERY_S = 0.5            # the runner's state is checked this often for ERROR (ai-runner's process guardian)
# why upstream swaps (the cause go-livepeer's stopProcessing gives, server/ai_live_video.go)
EOS = "trickle subscribe stopping, stream not found, err=EOF"
CONTROL_LOST = "control channel does not exist"


class RunnerHost(Protocol):
    """What the runner reads of its stream: settings and clock, the job (lease, faults), the prompt's look,
    whether the stream still runs (and which orchestrator generation), and where its events and output go."""

    config: GatewayConfig
    network: Network
    loop: asyncio.AbstractEventLoop
    rng: random.Random
    t0: float
    pipeline: str
    lease: Lease | None
    faults: list[Fault]
    prompt: str
    look: Look
    lut: Any
    params_update: float | None
    closed: str | None
    generation: int
    ingest: Ingest | None

    def event(self, name: str, **data: Any) -> None: ...

    def fail(self, message: str, trace: str | None = None) -> None: ...

    def error_event(self, message: str) -> None: ...

    def close_soon(self, reason: str) -> None: ...

    def swap_soon(self, cause: str) -> None: ...

    def viewing(self) -> bool: ...

    def deliver(self, packet: av.Packet[Any], keyframe: bool, generation: int) -> None: ...


class RunnerModel:
    def __init__(self, host: RunnerHost) -> None:
        self.host = host
        self.restart_count = 0
        self.restarts: dict[str, int] = {}  # per orchestrator address: its runner's restarts (ai-runner restart_count)
        self.next_pts = 0.0       # ai-runner's decoder: the earliest media time of the next frame it takes
        self.last_error: tuple[str, float] | None = None   # the runner's (message, loop time)
        self.last_restart: float | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: dict[str, int] = {}
        self.truth = FrameTruth()
        self.in_rate, self.out_rate = Rate(), Rate()
        self.last_in: float | None = None
        self.last_out: float | None = None
        self.last_in_pts: float | None = None   # seconds, media time of the last input / output frame
        self.last_out_pts: float | None = None
        self.last_due = 0.0
        self.media_anchor: float | None = None  # loop time of media time 0 at the runner (see _ready_at)
        self.busy_until = float("-inf")       # the runner finishes its current frame then
        self.queue_free_at = float("-inf")    # the frame waiting in its one-frame input queue starts then
        self.start_at = 0.0                   # when the admitted frame's inference starts
        self.runner_start: float | None = None
        self.ready_at: float | None = None    # the pipeline has loaded (after any cold start)
        self.warmup_left = 0
        self.arrivals: dict[int, float] = {}  # RTP timestamp -> arrival of the frame's last packet
        self.arrival_misses = 0               # decoded frames whose packet arrival was unknown (timed at decode)
        self.relay_queue: asyncio.Queue[InFrame] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self.relay_ts0: int | None = None
        self.relay_need_key = True
        self.encoder: H264Encoder | None = None

    def start(self, lease: Lease) -> None:
        """The orchestrator took the job: its runner starts (cold or warm), its warm-up ahead."""
        h = self.host
        self.runner_start = h.loop.time()
        self.ready_at = self.runner_start + (lease.profile.cold_start_s if lease.cold_start else 0.0)
        self.warmup_left = lease.profile.warmup_frames
        self.restart_count = self.restarts.get(lease.orchestrator.address, 0)

    def state(self) -> str:
        """The runner's pipeline state (ai-runner's rules, ``fleet.gateway.runner_state``)."""
        h = self.host
        now = h.loop.time()
        start = self.runner_start if self.runner_start is not None else h.t0
        ready = self.ready_at if self.ready_at is not None and now >= self.ready_at else None
        return runner_state(RunnerClock(
            now=now, start=start, ready=ready, running=h.closed is None, last_input=self.last_in,
            last_output=self.last_out, params_update=h.params_update,
            last_error=self.last_error[1] if self.last_error else None, last_restart=self.last_restart,
            input_fps=self.in_rate.fps(now, start), output_fps=self.out_rate.fps(now, start),
            reload_error_s=COMFYUI_RELOAD_ERROR_S if h.pipeline == "comfyui" else RELOAD_ERROR_S))

    def fps_cap(self) -> float:
        lease = self.host.lease
        if lease is None:
            return 0.0
        cap = lease.profile.fps_cap * (1 - lease.profile.prompt_cost * prompt_cost(self.host.prompt))
        fault = self.active("fps_drop")
        return cap * (fault.fps_factor if fault else 1.0)

    def _draw_delay(self) -> float:
        assert self.host.lease is not None
        d, rng = self.host.lease.profile.delay, self.host.rng
        if d.dist == "fixed":
            ms = d.mean_ms
        elif d.dist == "uniform":
            ms = rng.uniform(d.mean_ms - d.jitter_ms, d.mean_ms + d.jitter_ms)
        else:
            ms = rng.gauss(d.mean_ms, d.jitter_ms)
        return max(0.0, ms) / 1000.0

    def active(self, kind: str) -> Fault | None:
        """The fault of ``kind`` in force now on this runner, if any."""
        if self.runner_start is None:
            return None
        t = self.host.loop.time() - self.runner_start
        for f in self.host.faults:
            if f.kind == kind and t >= f.after_s and (f.duration_s is None or t < f.after_s + f.duration_s):
                return f
        return None

    async def pump(self, track: MediaStreamTrack) -> None:
        """Processing mode: frames as aiortc decoded them."""
        h = self.host
        idle = h.config.idle_timeout_s
        seq = 0
        while not h.closed:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout=idle)
            except asyncio.TimeoutError:
                h.fail(f"no input for {idle:g} s")
                return
            except MediaStreamError:
                h.close_soon("input ended")
                return
            if not isinstance(frame, av.VideoFrame):
                continue  # a video track hands out frames; anything else is not the runner's input
            seq += 1
            self._ingest(frame, seq, self._arrival_of(frame))

    def on_frame(self, frame: InFrame) -> None:
        """A frame's last packet arrived: its arrival kept for the decoded frame, or, in relay mode, the frame."""
        if self.host.config.relay:
            if self.relay_queue.full():
                self.relay_queue.get_nowait()
            self.relay_queue.put_nowait(frame)
            return
        if len(self.arrivals) >= ARRIVALS_KEPT:
            self.arrivals.pop(next(iter(self.arrivals)))
        self.arrivals[frame.timestamp & 0xFFFFFFFF] = frame.arrival

    def pts_origin(self) -> int | None:
        """The publisher's RTP timestamp of the truth's pts 0 (the truth's frame ``pts`` + it = the packets'
        timestamp, mod 2**32), once a frame came in."""
        if self.host.config.relay:
            return None if self.relay_ts0 is None else self.relay_ts0 & 0xFFFFFFFF
        ingest = self.host.ingest
        origin = timestamp_origin(ingest.receiver if ingest else None)
        return None if origin is None else origin & 0xFFFFFFFF  # aiortc's goes below 0 as the clock wraps

    def _arrival_of(self, frame: av.VideoFrame) -> float:
        """When the frame's last packet arrived (before aiortc's jitter buffer and decoder), else now."""
        ingest = self.host.ingest
        origin = timestamp_origin(ingest.receiver if ingest else None)
        if origin is None or frame.pts is None:
            self.arrival_misses += 1
            return self.host.loop.time()
        arrival = self.arrivals.pop((frame.pts + origin) & 0xFFFFFFFF, None)
        if arrival is None:
            self.arrival_misses += 1
            return self.host.loop.time()
        return arrival

    async def pump_relay(self) -> None:
        """Relay mode: encoded frames as they arrived, forwarded without decoding."""
        h = self.host
        idle = h.config.idle_timeout_s
        seq = 0
        while not h.closed:
            try:
                frame = await asyncio.wait_for(self.relay_queue.get(), timeout=idle)
            except asyncio.TimeoutError:
                h.fail(f"no input for {idle:g} s")
                return
            if h.ingest is not None and h.ingest.codec not in h.config.video_codecs:
                continue  # the gather refuses it
            if self.relay_ts0 is None:
                self.relay_ts0 = frame.timestamp
            packet = av.Packet(frame.data)
            packet.pts = frame.timestamp - self.relay_ts0
            packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            seq += 1
            self._ingest(packet, seq, frame.arrival, keyframe=frame.keyframe and frame.complete)

    def _drop_reason(self, t_in: float) -> str | None:
        if self.host.lease is None or self.ready_at is None:
            return "no_orchestrator"
        if t_in < self.ready_at:
            return "cold_start"
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return "warmup"
        if self.active("output_stall"):
            return "fault:output_stall"
        # ai-runner: the input queue holds one frame and a frame that finds it full is dropped
        # (process.py input_queue maxsize=1, _try_queue_put); inference takes 1/fps_cap per frame.
        start = max(t_in, self.busy_until)
        if start > t_in and t_in < self.queue_free_at:
            return "fps_cap"
        self.queue_free_at = start
        self.busy_until = start + 1.0 / self.fps_cap()
        self.start_at = start
        return None

    def _ingest(self, frame: av.VideoFrame | av.Packet[Any], seq: int, t_in: float, keyframe: bool = False) -> None:
        h = self.host
        self.frames_in += 1
        self.in_rate.add(t_in)
        if self.last_in is None:
            h.event("runner_receive_first_ingest_segment")
        self.last_in = t_in
        if frame.pts is not None and frame.time_base is not None:
            self.last_in_pts = float(frame.pts * frame.time_base)
        t_ready = self._ready_at(frame, t_in)
        relay = h.config.relay
        reason = "no_orchestrator" if h.lease is None or self.ready_at is None else None
        if reason is None and not relay and self._too_soon(frame):
            reason = "max_framerate"
        reason = reason or self._drop_reason(t_ready)
        if relay and not reason and self.relay_need_key and not keyframe:
            reason = "relay_await_keyframe"  # an encoded stream resumes at a keyframe, or decoders break
        if reason:
            self.relay_need_key = True
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            self.truth.add(seq, frame.pts, t_in - h.t0, None, reason)
            return
        self.relay_need_key = False
        out: av.VideoFrame | av.Packet[Any] = frame  # relay mode: the encoded frame as it came
        if isinstance(frame, av.VideoFrame):
            out = apply_look(frame, h.look, h.lut, black=self.active("black_frames") is not None)
        delay = self._draw_delay()
        due = max(self.start_at + delay, self.last_due)
        self.last_due = due
        index = self.truth.add(seq, frame.pts, t_in - h.t0, delay * 1000, None)
        self.truth.queued(index, self.start_at - t_in)
        h.loop.call_at(due, self._emit, out, self.start_at, index, keyframe, h.generation)

    def _too_soon(self, frame: av.VideoFrame | av.Packet[Any]) -> bool:
        """ai-runner's decoder caps its input at ``MAX_FRAMERATE`` by media time: a frame earlier than the
        next slot is dropped; a late one moves the slot (re-expressed from trickle/decoder.py)."""
        if frame.pts is None or frame.time_base is None:
            return False
        drop, self.next_pts = max_framerate(self.next_pts, float(frame.pts * frame.time_base))
        return drop

    def _ready_at(self, frame: av.VideoFrame | av.Packet[Any], t_in: float) -> float:
        """When the runner may take the frame: its media time on a clock anchored at the first frame plus the
        ingest buffer (go-livepeer segments the ingest before the runner decodes it), or its arrival if later.
        Arrival noise within the buffer (this machine's own scheduling) does not reach the output; a frame
        later than that is late. An anchor that would hold frames longer than the buffer (a publisher whose
        clock runs fast, or one that paused) is moved."""
        if frame.pts is None or frame.time_base is None:
            return t_in
        media = float(frame.pts * frame.time_base)
        buffer = self.host.config.ingest_buffer_ms / 1000
        if self.media_anchor is None or self.media_anchor + media - t_in > buffer:
            self.media_anchor = t_in - media + buffer
        return max(t_in, self.media_anchor + media)

    def _emit(self, frame: av.VideoFrame | av.Packet[Any], start: float, index: int, keyframe: bool,
              generation: int) -> None:
        h = self.host
        if h.closed or generation != h.generation:
            return  # the stream ended, or its orchestrator was swapped away while the frame was in flight
        t = h.loop.time()
        packet = frame if isinstance(frame, av.Packet) else self._encode(frame)
        if packet is None:
            return
        keyframe = keyframe if isinstance(frame, av.Packet) else packet.is_keyframe
        pts90 = None   # the output frame's pts on the RTP clock, kept while a viewer may time its departure
        if h.viewing() and packet.pts is not None and packet.time_base is not None:
            pts90 = round(packet.pts * packet.time_base * VIDEO_CLOCK)
        self.truth.processed(index, t - start, pts90)  # inference start to output
        self.frames_out += 1
        self.out_rate.add(t)
        self.last_out = t
        if packet.pts is not None and packet.time_base is not None:
            self.last_out_pts = float(packet.pts * packet.time_base)
        h.deliver(packet, keyframe, generation)

    async def watch(self, generation: int) -> None:
        """Mid-stream faults on a schedule (disconnect, orchestrator swap, capacity drop), then the runner's
        guard: its ERROR state stops the stream and restarts the runner, and the gateway swaps."""
        h = self.host
        timed = sorted((f for f in h.faults if f.kind in TIMED_FAULTS), key=lambda f: f.after_s)
        for f in timed:
            assert self.runner_start is not None
            await asyncio.sleep(max(0.0, self.runner_start + f.after_s - h.loop.time()))
            if h.closed or generation != h.generation:
                return
            h.event("fault", kind=f.kind)
            if f.kind in ("disconnect", "orchestrator_swap"):
                h.swap_soon(CONTROL_LOST if f.kind == "disconnect" else EOS)
                return
            if f.kind == "transient_error":
                h.error_event(MISSING_HANDLE)
                continue
            assert h.lease is not None
            h.network.drop_capacity(h.lease.orchestrator.address, f.slots)
            if f.duration_s is not None:
                h.loop.call_later(f.duration_s, h.network.restore_capacity, h.lease.orchestrator.address, f.slots)
        while not h.closed and generation == h.generation:
            if self.state() == "ERROR":
                self._restart_runner()
                h.swap_soon(EOS)
                return
            await asyncio.sleep(GUARD_EVERY_S)

    def _restart_runner(self) -> None:
        """ai-runner on ERROR: the stream is stopped and the process restarted (LOADING, restart_count + 1)."""
        assert self.host.lease is not None
        address = self.host.lease.orchestrator.address
        self.restarts[address] = self.restart_count = self.restarts.get(address, 0) + 1
        self.last_restart = self.host.loop.time()
        self.last_error = ("pipeline error: the runner restarts", self.last_restart)
        self.host.event("runner_restart", orchestrator=address, restart_count=self.restart_count)

    def new_runner(self) -> None:
        """A swap: the next orchestrator's runner starts from nothing (its rates, queue, clock and encoder)."""
        self.in_rate, self.out_rate = Rate(), Rate()
        self.last_in = self.last_out = None
        self.media_anchor = None
        self.busy_until = self.queue_free_at = float("-inf")
        self.last_due = 0.0
        self.next_pts = 0.0
        self.truth.unsent.clear()
        self.encoder = None          # the new output starts on a keyframe
        self.relay_need_key = True
        self.runner_start = self.ready_at = None

    def _encode(self, frame: av.VideoFrame) -> av.Packet[Any] | None:
        """The processed frame as H.264, once for every viewer; an IDR every output GOP."""
        if self.encoder is None:
            assert self.host.lease is not None
            fps = self.host.lease.profile.fps_cap
            self.encoder = H264Encoder(self.host.config.output_gop_s, fps)
        return self.encoder.encode(frame)
