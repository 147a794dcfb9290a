"""The simulated ai-runner of one reference-gateway stream: what happens to each input frame.

Frames arrive (decoded by aiortc, or, in relay mode, encoded from the RTP tap), wait for the ingest
buffer, and meet the runner: cold start, warm-up, its one-frame input queue at the GPU's fps cap
(ai-runner process.py drops a frame that finds the queue full), a processing delay drawn from the
orchestrator's profile, the prompt's look, and the faults the network configured. Every decision is
kept per frame as ground truth (``frames``), which the tests compare the fleet's measurements with.

``RunnerModel`` is the runner part of ``fleet.gateway.stream.Stream`` (a mixin over the state
declared in ``fleet.gateway.state``, which ``Stream.__init__`` sets).
"""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fleet.gateway.config import Fault
from fleet.gateway.egress import MAX_TRUTH_FRAMES, SUBSCRIBER_QUEUE, H264Encoder
from fleet.gateway.state import Rate, StreamState
from fleet.gateway.swaps import SwapLimiter
from fleet.gateway.transform import apply_look, prompt_cost
from fleet.rtp import VIDEO_CLOCK, TapFrame
from fleet.webrtc import timestamp_origin


ARRIVALS_KEPT = 512            # arrival times of frames still in aiortc's decoder
TIMED_FAULTS = ("disconnect", "orchestrator_swap", "capacity_drop", "transient_error")
# server/ai_live_video.go: the trickle publisher found no next segment handle; the segment is dropped, the stream goes on
MISSING_HANDLE = "Missing next handle: segment writer closed"
MAX_FRAMERATE = 24.0           # ai-runner trickle/decoder.py: input frames closer than 1/24 s in media time are dropped
GUARD_EVERY_S = 0.5            # the runner's state is checked this often for ERROR (ai-runner's process guardian)
# why upstream swaps (the cause go-livepeer's stopProcessing gives, server/ai_live_video.go)
EOS = "trickle subscribe stopping, stream not found, err=EOF"
CONTROL_LOST = "control channel does not exist"


def max_framerate(next_pts: float, t: float, fps: float = MAX_FRAMERATE) -> tuple[bool, float]:
    """ai-runner's input cap (trickle/decoder.py): (drop the frame at media time ``t``, the next slot).
    A frame before the slot is dropped; one on time moves the slot a frame on from the slot (some jitter
    allowed); one more than a frame late moves it a frame on from itself."""
    step = 1.0 / fps
    if t < next_pts:
        return True, next_pts
    return False, (t + step if t > next_pts + step else next_pts + step)


class RunnerModel(StreamState):
    def _init_runner(self) -> None:
        """The runner's state before selection (called by ``Stream.__init__``)."""
        self.restart_count = 0
        self.restarts = {}
        self.swaps = SwapLimiter(self.loop.time())   # upstream's swapper starts its clock at the stream's start
        self.swapping = False
        self.next_pts = 0.0       # ai-runner's decoder: the earliest media time of the next frame it takes
        self.last_error = None   # the runner's (message, loop time)
        self.last_restart = None
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = {}
        # [seq, pts, t_in, delay_drawn_ms, delay_actual_ms | None, dropped reason, residence_ms | None,
        #  queued_ms | None (arrival to inference start: the wait in the runner's one-frame queue)]
        self.frames = []
        self.unsent = {}  # output RTP-clock pts -> truth index, until its packets leave
        self.in_rate, self.out_rate = Rate(), Rate()
        self.last_in = None
        self.last_out = None
        self.last_in_pts = None   # seconds, media time of the last input / output frame
        self.last_out_pts = None
        self.last_due = 0.0
        self.media_anchor = None  # loop time of media time 0 at the runner (see _ready_at)
        self.lossy = False                    # a packet_loss fault applies (set at selection)
        self.busy_until = float("-inf")       # the runner finishes its current frame then
        self.queue_free_at = float("-inf")    # the frame waiting in its one-frame input queue starts then
        self.start_at = 0.0                   # when the admitted frame's inference starts
        self.runner_start = None
        self.ready_at = None      # the pipeline has loaded (after any cold start)
        self.warmup_left = 0
        self.arrivals = {}  # RTP timestamp -> arrival of the frame's last packet
        self.arrival_misses = 0               # decoded frames whose packet arrival was unknown (timed at decode)
        self.relay_queue = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self.relay_ts0 = None
        self.relay_need_key = True
        self.encoder = None

    def fps_cap(self) -> float:
        if self.lease is None:
            return 0.0
        cap = self.lease.profile.fps_cap * (1 - self.lease.profile.prompt_cost * prompt_cost(self.prompt))
        fault = self._active("fps_drop")
        return cap * (fault.fps_factor if fault else 1.0)

    def _draw_delay(self) -> float:
        assert self.lease is not None
        d = self.lease.profile.delay
        if d.dist == "fixed":
            ms = d.mean_ms
        elif d.dist == "uniform":
            ms = self.rng.uniform(d.mean_ms - d.jitter_ms, d.mean_ms + d.jitter_ms)
        else:
            ms = self.rng.gauss(d.mean_ms, d.jitter_ms)
        return max(0.0, ms) / 1000.0

    def _active(self, kind: str) -> Fault | None:
        if self.runner_start is None:
            return None
        t = self.loop.time() - self.runner_start
        for f in self.faults:
            if f.kind == kind and t >= f.after_s and (f.duration_s is None or t < f.after_s + f.duration_s):
                return f
        return None

    async def _pump(self, track: MediaStreamTrack) -> None:
        idle = self.gw.config.idle_timeout_s
        seq = 0
        while not self.closed:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout=idle)
            except asyncio.TimeoutError:
                self.fail(f"no input for {idle:g} s")
                return
            except MediaStreamError:
                self.close_soon("input ended")
                return
            if not isinstance(frame, av.VideoFrame):
                continue  # a video track hands out frames; anything else is not the runner's input
            seq += 1
            self._ingest(frame, seq, self._arrival_of(frame))

    def _on_tap_frame(self, frame: TapFrame) -> None:
        self.first_packet.set()
        if self.gw.config.relay:
            if self.relay_queue.full():
                self.relay_queue.get_nowait()
            self.relay_queue.put_nowait(frame)
            return
        if len(self.arrivals) >= ARRIVALS_KEPT:
            self.arrivals.pop(next(iter(self.arrivals)))
        self.arrivals[frame.timestamp & 0xFFFFFFFF] = frame.arrival

    def _arrival_of(self, frame: av.VideoFrame) -> float:
        """When the frame's last packet arrived (before aiortc's jitter buffer and decoder), else now."""
        origin = timestamp_origin(self.tap.receiver if self.tap else None)
        if origin is None or frame.pts is None:
            self.arrival_misses += 1
            return self.loop.time()
        arrival = self.arrivals.pop((frame.pts + origin) & 0xFFFFFFFF, None)
        if arrival is None:
            self.arrival_misses += 1
            return self.loop.time()
        return arrival

    async def _pump_relay(self) -> None:
        """Relay mode: encoded frames from the tap, forwarded without decoding."""
        idle = self.gw.config.idle_timeout_s
        seq = 0
        while not self.closed:
            try:
                tap = await asyncio.wait_for(self.relay_queue.get(), timeout=idle)
            except asyncio.TimeoutError:
                self.fail(f"no input for {idle:g} s")
                return
            if self.tap is not None and self.tap.codec not in self.gw.config.video_codecs:
                continue  # the gather refuses it
            if self.relay_ts0 is None:
                self.relay_ts0 = tap.timestamp
            packet = av.Packet(tap.data)
            packet.pts = tap.timestamp - self.relay_ts0
            packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            seq += 1
            self._ingest(packet, seq, tap.arrival, keyframe=tap.keyframe and tap.complete)

    def _drop_reason(self, t_in: float) -> str | None:
        if self.lease is None or self.ready_at is None:
            return "no_orchestrator"
        if t_in < self.ready_at:
            return "cold_start"
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return "warmup"
        if self._active("output_stall"):
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
        self.frames_in += 1
        self.in_rate.add(t_in)
        if self.last_in is None:
            self.event("runner_receive_first_ingest_segment")
        self.last_in = t_in
        if frame.pts is not None and frame.time_base is not None:
            self.last_in_pts = float(frame.pts * frame.time_base)
        t_ready = self._ready_at(frame, t_in)
        relay = self.gw.config.relay
        reason = "no_orchestrator" if self.lease is None or self.ready_at is None else None
        if reason is None and not relay and self._too_soon(frame):
            reason = "max_framerate"
        reason = reason or self._drop_reason(t_ready)
        if relay and not reason and self.relay_need_key and not keyframe:
            reason = "relay_await_keyframe"  # an encoded stream resumes at a keyframe, or decoders break
        if reason:
            self.relay_need_key = True
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            self._truth(seq, frame.pts, t_in, None, None, reason)
            return
        self.relay_need_key = False
        out: av.VideoFrame | av.Packet[Any] = frame  # relay mode: the encoded frame as it came
        if isinstance(frame, av.VideoFrame):
            out = apply_look(frame, self.look, self.lut, black=self._active("black_frames") is not None)
        delay = self._draw_delay()
        due = max(self.start_at + delay, self.last_due)
        self.last_due = due
        index = self._truth(seq, frame.pts, t_in, delay * 1000, None, None)
        if index >= 0:
            self.frames[index][7] = round((self.start_at - t_in) * 1000, 3)
        self.loop.call_at(due, self._emit, out, self.start_at, index, keyframe, self.generation)

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
        buffer = self.gw.config.ingest_buffer_ms / 1000
        if self.media_anchor is None or self.media_anchor + media - t_in > buffer:
            self.media_anchor = t_in - media + buffer
        return max(t_in, self.media_anchor + media)

    def _truth(self, seq: int, pts: int | None, t_in: float, drawn: float | None, actual: float | None,
               reason: str | None) -> int:
        if len(self.frames) >= MAX_TRUTH_FRAMES:
            return -1
        self.frames.append([seq, pts, round(t_in - self.t0, 6), drawn, actual, reason, None, None])
        return len(self.frames) - 1

    def _emit(self, frame: av.VideoFrame | av.Packet[Any], start: float, index: int, keyframe: bool,
              generation: int) -> None:
        if self.closed or generation != self.generation:
            return  # the stream ended, or its orchestrator was swapped away while the frame was in flight
        t = self.loop.time()
        packet = frame if isinstance(frame, av.Packet) else self._encode(frame)
        if packet is None:
            return
        keyframe = keyframe if isinstance(frame, av.Packet) else packet.is_keyframe
        if index >= 0:
            self.frames[index][4] = round((t - start) * 1000, 3)  # inference start to output
            if self.whep and packet.pts is not None and packet.time_base is not None:
                pts90 = round(packet.pts * packet.time_base * VIDEO_CLOCK)
                if len(self.unsent) >= ARRIVALS_KEPT:
                    self.unsent.pop(next(iter(self.unsent)))
                self.unsent[pts90] = index
        if self.output is not None and not self.output.ready.is_set():
            self.event("runner_send_first_processed_segment", generation=generation)
            self.output.ready.set()
        self.frames_out += 1
        self.out_rate.add(t)
        self.last_out = t
        if packet.pts is not None and packet.time_base is not None:
            self.last_out_pts = float(packet.pts * packet.time_base)
        for _, track in self.whep:
            if not track.finished:
                track.push(packet, keyframe)

    async def _watch(self, generation: int) -> None:
        """Mid-stream faults on a schedule (disconnect, orchestrator swap, capacity drop), then the runner's
        guard: its ERROR state stops the stream and restarts the runner, and the gateway swaps."""
        timed = sorted((f for f in self.faults if f.kind in TIMED_FAULTS), key=lambda f: f.after_s)
        for f in timed:
            assert self.runner_start is not None
            await asyncio.sleep(max(0.0, self.runner_start + f.after_s - self.loop.time()))
            if self.closed or generation != self.generation:
                return
            self.event("fault", kind=f.kind)
            if f.kind in ("disconnect", "orchestrator_swap"):
                self.swap_soon(CONTROL_LOST if f.kind == "disconnect" else EOS)
                return
            if f.kind == "transient_error":
                self.error_event(MISSING_HANDLE)
                continue
            assert self.lease is not None
            self.gw.network.drop_capacity(self.lease.orchestrator.address, f.slots)
            if f.duration_s is not None:
                self.loop.call_later(f.duration_s, self.gw.network.restore_capacity,
                                     self.lease.orchestrator.address, f.slots)
        while not self.closed and generation == self.generation:
            if self.state() == "ERROR":
                self._restart_runner()
                self.swap_soon(EOS)
                return
            await asyncio.sleep(GUARD_EVERY_S)

    def _restart_runner(self) -> None:
        """ai-runner on ERROR: the stream is stopped and the process restarted (LOADING, restart_count + 1)."""
        assert self.lease is not None
        address = self.lease.orchestrator.address
        self.restarts[address] = self.restart_count = self.restarts.get(address, 0) + 1
        self.last_restart = self.loop.time()
        self.last_error = ("pipeline error: the runner restarts", self.last_restart)
        self.event("runner_restart", orchestrator=address, restart_count=self.restart_count)

    def new_runner(self) -> None:
        """A swap: the next orchestrator's runner starts from nothing (its rates, queue, clock and encoder)."""
        self.in_rate, self.out_rate = Rate(), Rate()
        self.last_in = self.last_out = None
        self.media_anchor = None
        self.busy_until = self.queue_free_at = float("-inf")
        self.last_due = 0.0
        self.next_pts = 0.0
        self.unsent.clear()
        self.encoder = None          # the new output starts on a keyframe
        self.relay_need_key = True
        self.runner_start = self.ready_at = None

    def _encode(self, frame: av.VideoFrame) -> av.Packet[Any] | None:
        """The processed frame as H.264, once for every viewer; an IDR every output GOP."""
        if self.encoder is None:
            assert self.lease is not None
            fps = self.lease.profile.fps_cap
            self.encoder = H264Encoder(self.gw.config.output_gop_s, fps)
        return self.encoder.encode(frame)
