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
from fleet.gateway.transform import apply_look, prompt_cost
from fleet.rtp import VIDEO_CLOCK, TapFrame
from fleet.webrtc import timestamp_origin


ARRIVALS_KEPT = 512            # arrival times of frames still in aiortc's decoder
TIMED_FAULTS = ("disconnect", "orchestrator_swap", "capacity_drop")


class RunnerModel(StreamState):
    def _init_runner(self) -> None:
        """The runner's state before selection (called by ``Stream.__init__``)."""
        self.restart_count = 0
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
        reason = self._drop_reason(t_ready)
        relay = self.gw.config.relay
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
        self.loop.call_at(due, self._emit, out, self.start_at, index, keyframe)

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

    def _emit(self, frame: av.VideoFrame | av.Packet[Any], start: float, index: int, keyframe: bool) -> None:
        if self.closed:
            return
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
        if self.frames_out == 0:
            self.event("runner_send_first_processed_segment")
            self.output_ready.set()
        self.frames_out += 1
        self.out_rate.add(t)
        self.last_out = t
        if packet.pts is not None and packet.time_base is not None:
            self.last_out_pts = float(packet.pts * packet.time_base)
        for _, track in self.whep:
            track.push(packet, keyframe)

    async def _watch(self) -> None:
        """Mid-stream faults on a schedule: disconnect, orchestrator swap, capacity drop."""
        timed = sorted((f for f in self.faults if f.kind in TIMED_FAULTS),
                       key=lambda f: f.after_s)
        for f in timed:
            assert self.runner_start is not None
            await asyncio.sleep(max(0.0, self.runner_start + f.after_s - self.loop.time()))
            if self.closed:
                return
            self.event("fault", kind=f.kind)
            if f.kind == "disconnect":
                self.last_error = ("orchestrator disconnected", self.loop.time())
                self.fail("orchestrator disconnected")
                return
            if f.kind == "orchestrator_swap":
                self._swap()
            else:
                assert self.lease is not None
                self.gw.network.drop_capacity(self.lease.orchestrator.address, f.slots)
                if f.duration_s is not None:
                    self.loop.call_later(f.duration_s, self.gw.network.restore_capacity,
                                         self.lease.orchestrator.address, f.slots)

    def _swap(self) -> None:
        """The orchestrator-swap fault: the stream moves to another orchestrator, its runner restarts."""
        assert self.lease is not None
        old, new = self.lease, self.gw.network.swap(self.lease)
        if new is None:
            self.event("orchestrator_swap_failed", reason="no other orchestrator has room")
            return
        self.lease = new
        self.restart_count += 1
        self.last_restart = self.loop.time()
        self.event("orchestrator_swap", old=old.orchestrator.address, new=new.orchestrator.address)

    def _encode(self, frame: av.VideoFrame) -> av.Packet[Any] | None:
        """The processed frame as H.264, once for every viewer; an IDR every output GOP."""
        if self.encoder is None:
            assert self.lease is not None
            fps = self.lease.profile.fps_cap
            self.encoder = H264Encoder(round(self.gw.config.output_gop_s * fps), fps)
        return self.encoder.encode(frame)
