"""One stream through the reference gateway, as go-livepeer runs it.

The WHIP offer is answered at once (``201``); orchestrator selection, job
start and the media gather then run in the background, exactly as in
go-livepeer's ``CreateWhip`` (server/ai_mediaserver.go) and ``CreateWHIP``
(media/whip_server.go): no orchestrator within ``selection_timeout_s`` records
``gateway_status.error = "no orchestrators available"`` and closes the peer
connection; no video within ``video_gather_timeout_s`` closes it with
"missing video"; a video track that is not H.264 with "non-h264 video". The
gateway asks the publisher for a keyframe every ``pli_interval_s``.

Frames then pass the simulated runner (cold start, warm-up, output fps cap,
prompt look, processing delay with jitter, faults), are encoded once as H.264
(or, in relay mode, forwarded as they came) and go to every WHEP viewer from
its first keyframe on, as go-livepeer's WHEP server does. Everything the
runner did to each frame is kept as ground truth for tests.
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import json
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from fleet.gateway.config import Fault
from fleet.gateway.network import Lease
from fleet.gateway.runner_state import RunnerClock, runner_state
from fleet.gateway.transform import apply_look, look_for, prompt_cost
from fleet.rtp import VIDEO_CLOCK, FrameTap, TapFrame, unwrap16
from fleet.webrtc import codecs_named, new_peer_connection, request_keyframe, timestamp_origin

if TYPE_CHECKING:
    from fleet.gateway.config import GatewayConfig
    from fleet.gateway.network import Network


class StreamHost(Protocol):
    """What a stream needs of the gateway that holds it (``ReferenceGateway`` in server.py): its settings,
    the network its slots come from, and to be told when the stream has closed."""

    config: GatewayConfig
    network: Network

    def released(self, stream: Stream) -> None: ...

__all__ = ["NO_ORCHESTRATORS", "OutputTrack", "Stream"]

log = logging.getLogger(__name__)

NO_ORCHESTRATORS = "no orchestrators available"
ARRIVALS_KEPT = 512            # arrival times of frames still in aiortc's decoder
SUBSCRIBER_QUEUE = 90          # frames buffered per WHEP viewer before the oldest is dropped
MAX_TRUTH_FRAMES = 108_000     # per-frame truth kept (an hour at 30 fps); summaries are always kept
MAX_EVENTS = 10_000            # lifecycle events kept per stream
FPS_WINDOW_S = 10.0            # the runner's fps is counted over this window (ai-runner FPS_LOG_INTERVAL)
SELECTION_RETRY_S = 0.1        # selection retries this often within selection_timeout_s


def _log_crash(task: asyncio.Task) -> None:
    """A stream's background task died of a bug: say so loudly (faults are not exceptions)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("stream task crashed", exc_info=task.exception())


def _ms(unix: float | None) -> int | None:
    return None if unix is None else int(unix * 1000)


class OutputTrack(MediaStreamTrack):
    """What one WHEP viewer receives: encoded frames, from the first keyframe on (go-livepeer: hasIDR)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        self.first_pts90: list[int] = []  # the RTP-clock pts of the first frame handed to the sender
        self.started = False              # a keyframe has gone out: the viewer can decode from here
        self.frames_sent = 0
        self.awaiting_keyframe = 0        # frames dropped before the first keyframe
        # truth: (output pts on the RTP clock, loop time its last packet left) per frame sent to this viewer
        self.egress: deque[tuple[int, float]] = deque(maxlen=MAX_TRUTH_FRAMES)
        self.main_pt: int | None = None   # the media payload type (any other is a retransmission)
        self.seq_first: int | None = None  # media sequence numbers sent to this viewer: first and highest,
        self.seq_highest: int | None = None  # unwrapped (first transmissions are consecutive)
        self.packets_dropped = 0          # transmissions the packet_loss fault dropped (a NACK may resend)
        self.undelivered: set[int] = set()  # sequence numbers dropped and not (yet) delivered by a resend

    @property
    def packets_sent(self) -> int:
        """Distinct media packets sent (a retransmission reuses its sequence number)."""
        return 0 if self.seq_first is None else self.seq_highest - self.seq_first + 1

    def push(self, packet: av.Packet | None, keyframe: bool = False) -> None:
        if packet is not None and not self.started:
            if not keyframe:
                self.awaiting_keyframe += 1
                return
            self.started = True
        if self.queue.qsize() >= SUBSCRIBER_QUEUE:
            self.queue.get_nowait()
        self.queue.put_nowait(packet)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self.queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        if not self.first_pts90 and packet.pts is not None and packet.time_base is not None:
            self.first_pts90.append(round(packet.pts * packet.time_base * VIDEO_CLOCK))
        self.frames_sent += 1
        return packet


@dataclass
class _Rate:
    """Events per second over a sliding window."""

    window: float = FPS_WINDOW_S
    times: deque = field(default_factory=deque)

    def add(self, t: float) -> None:
        self.times.append(t)
        while self.times and self.times[0] < t - self.window:
            self.times.popleft()

    def fps(self, now: float, since: float) -> float:
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        span = min(self.window, now - since)
        return len(self.times) / span if span > 0.5 else 0.0


class Stream:
    def __init__(self, gateway: StreamHost, name: str, stream_id: str, pipeline: str, params: dict[str, Any],
                 orchestrator: str = "", include_uris: tuple[str, ...] = (), exclude_uris: tuple[str, ...] = (),
                 user_agent: str = "", request_id: str | None = None) -> None:
        self.gw = gateway
        cfg = gateway.config
        self.name = name
        self.id = stream_id                       # the status key (streamId); may be ""
        self.request_id = request_id or secrets.token_hex(4)    # go-livepeer core.RandomManifestID
        self.key = f"{name}-{self.request_id}"    # unique per stream, for the truth endpoints
        self.pipeline = pipeline
        self.orchestrator = orchestrator
        self.include_uris, self.exclude_uris = include_uris, exclude_uris
        self.e2e_test = "Headless" in user_agent  # go-livepeer tags such sessions "e2e" in its logs
        self.lease: Lease | None = None
        self.faults: list[Fault] = []
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.t0_unix = time.time()
        self.rng = random.Random(f"{cfg.seed}:{name}:{stream_id}")
        self.pc = new_peer_connection()
        self.whep: list[tuple[Any, OutputTrack]] = []
        self.params: dict[str, Any] = {}
        self.prompt = ""
        self.closed: str | None = None  # the reason, once closed
        self.closed_unix: float | None = None
        self.closed_at: float | None = None
        self.restart_count = 0
        self.last_error: tuple[str, float] | None = None   # the runner's (message, loop time)
        self.last_restart: float | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: dict[str, int] = {}
        # [seq, pts, t_in, delay_drawn_ms, delay_actual_ms | None, dropped reason, residence_ms | None,
        #  queued_ms | None (arrival to inference start: the wait in the runner's one-frame queue)]
        self.frames: list[list] = []
        self.unsent: dict[int, int] = {}  # output RTP-clock pts -> truth index, until its packets leave
        self.prompts: list[tuple[float, str, str]] = []  # (t, prompt, params hash)
        self.events: deque[tuple[float, str, dict]] = deque(maxlen=MAX_EVENTS)
        self.in_rate, self.out_rate = _Rate(), _Rate()
        self.last_in: float | None = None
        self.last_out: float | None = None
        self.last_in_pts: float | None = None   # seconds, media time of the last input / output frame
        self.last_out_pts: float | None = None
        self.params_update: float | None = None
        self.last_due = 0.0
        self.media_anchor: float | None = None  # loop time of media time 0 at the runner (see _ready_at)
        self.lossy = False                    # a packet_loss fault applies (set at selection)
        self.busy_until = float("-inf")       # the runner finishes its current frame then
        self.queue_free_at = float("-inf")    # the frame waiting in its one-frame input queue starts then
        self.start_at = 0.0                   # when the admitted frame's inference starts
        self.runner_start: float | None = None
        self.ready_at: float | None = None      # the pipeline has loaded (after any cold start)
        self.warmup_left = 0
        self._tasks: list[asyncio.Task] = []
        self.arrivals: dict[int, float] = {}  # RTP timestamp -> arrival of the frame's last packet
        self.arrival_misses = 0               # decoded frames whose packet arrival was unknown (timed at decode)
        self.relay_queue: asyncio.Queue[TapFrame] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self.relay_ts0: int | None = None
        self.relay_need_key = True
        self.tap: FrameTap | None = None
        self.encoder: av.CodecContext | None = None
        self.encoded = 0
        self.first_packet = asyncio.Event()
        self.output_ready = asyncio.Event()
        self.ended = asyncio.Event()
        self._closing: asyncio.Task | None = None
        self.runner_status: dict[str, Any] | None = None   # the runner's last report (ai_stream_status)
        self.gateway_status: dict[str, Any] = {"whep_url": gateway.whep_url(name, self.request_id)}
        self.set_params(params, event=False)
        self.event("gateway_receive_stream_request", pipeline=pipeline, e2e=self.e2e_test)

    # --- time and records ---------------------------------------------------

    def now(self) -> float:
        return self.loop.time() - self.t0

    def unix(self, t: float | None) -> float | None:
        """A loop time as Unix seconds."""
        return None if t is None else self.t0_unix + (t - self.t0)

    def event(self, name: str, **data: Any) -> None:
        self.events.append((round(self.now(), 6), name, data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    def _active(self, kind: str) -> Fault | None:
        if self.runner_start is None:
            return None
        t = self.loop.time() - self.runner_start
        for f in self.faults:
            if f.kind == kind and t >= f.after_s and (f.duration_s is None or t < f.after_s + f.duration_s):
                return f
        return None

    def set_params(self, params: dict[str, Any], event: bool = True) -> None:
        self.params = params
        self.prompt = str(params.get("prompt", ""))
        self.look = look_for(self.prompt)
        self.lut = self.look.lut()
        # ai-runner: md5 of the params JSON with sorted keys
        self.params_hash = hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest()
        self.prompts.append((round(self.now(), 6), self.prompt, self.params_hash))
        if event:
            self.params_update = self.loop.time()
            self.event("params_update", params_hash=self.params_hash)

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

    # --- signaling -------------------------------------------------------------

    async def answer_whip(self, offer_sdp: str) -> str:
        """The SDP answer; raises ValueError (or aiortc's errors) for an offer that cannot be used."""
        relay = self.gw.config.relay
        # H.264 first: the codec the gateway works with. Other codecs are accepted at the SDP level so that
        # the media gather can refuse the track as go-livepeer does ("non-h264 video").
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences(codecs_named("video", "H264", "VP8", "VP9", "AV1"))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not relay:
                self._spawn(self._pump(track))

        @self.pc.on("iceconnectionstatechange")
        async def on_ice() -> None:
            state = self.pc.iceConnectionState
            self.event("ingest_ice", state=state)
            if state == "failed" and not self.closed:
                self.fail("ICE connection state failed")

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = self.pc.connectionState
            self.event("ingest_connection", state=state)
            if state in ("failed", "closed") and not self.closed:
                self.close_soon(f"ingest {state}")

        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.tap = FrameTap(transceiver.receiver, self._on_tap_frame, decode=not relay)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def begin(self) -> None:
        """What go-livepeer does after writing the 201: select, gather media, ask for keyframes, report."""
        self._spawn(self._select())
        self._spawn(self._gather())
        self._spawn(self._ask_keyframes())
        self._spawn(self._stats())
        if self.gw.config.relay:
            self._spawn(self._pump_relay())

    def viewers_open(self) -> int:
        return sum(1 for pc, _ in self.whep if pc.connectionState not in ("failed", "closed"))

    async def answer_whep(self, offer_sdp: str) -> str:
        pc = new_peer_connection()
        track = OutputTrack()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                track.push(None)
                await pc.close()

        transceiver = pc.addTransceiver(track, direction="sendonly")
        # processing mode encodes H.264; relay mode sends what the publisher sent (known: output exists)
        relayed = self.tap.codec if self.gw.config.relay and self.tap is not None else None
        transceiver.setCodecPreferences(codecs_named("video", relayed or "H264"))
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.whep.append((pc, track))
        self._time_egress(transceiver.sender, track, residence=len(self.whep) == 1)
        await pc.setLocalDescription(await pc.createAnswer())
        self.event("whep_subscriber", count=len(self.whep))
        return pc.localDescription.sdp

    def _time_egress(self, sender: Any, track: OutputTrack, residence: bool) -> None:
        """Truth of delivery: when each frame's last packet left for this viewer (and, for the first viewer,
        each input frame's whole residence: its arrival to that moment)."""
        dtls = sender.transport
        original = dtls._send_rtp
        origin: list[int] = []

        async def send_rtp(data: bytes) -> None:
            pt = data[1] & 0x7F if len(data) >= 12 else 0
            if pt >= 96 and (track.main_pt is None or pt == track.main_pt):
                track.main_pt = pt
                seq = int.from_bytes(data[2:4], "big")
                unwrapped = unwrap16(track.seq_highest, seq)
                track.seq_highest = max(unwrapped, track.seq_highest if track.seq_highest is not None else unwrapped)
                if track.seq_first is None:
                    track.seq_first = unwrapped
                loss = self._active("packet_loss") if self.lossy else None
                if loss is not None and self.rng.random() < loss.loss_pct / 100:
                    track.packets_dropped += 1
                    track.undelivered.add(seq)
                    return  # lost on the way to this viewer (a NACK may still bring it back)
                track.undelivered.discard(seq)
            await original(data)
            if len(data) < 12 or not data[1] & 0x80 or pt < 96 or pt != track.main_pt:
                return  # RTCP, a retransmission, or not the last packet of a frame
            ts = int.from_bytes(data[4:8], "big")
            if not origin:
                if not track.first_pts90:
                    return
                origin.append(ts - track.first_pts90[0])
            pts90 = (ts - origin[0]) & 0xFFFFFFFF
            if track.egress and (pts90 - track.egress[-1][0]) & 0xFFFFFFFF >= 1 << 31 or \
                    track.egress and pts90 == track.egress[-1][0]:
                return  # a retransmission (NACK): the frame left the first time
            track.egress.append((pts90, self.loop.time()))
            if not residence:
                return
            index = self.unsent.pop(pts90, None)
            if index is not None and index < len(self.frames):
                t_in = self.t0 + self.frames[index][2]
                self.frames[index][6] = round((self.loop.time() - t_in) * 1000, 3)

        dtls._send_rtp = send_rtp

    # --- what go-livepeer does after the 201 -------------------------------------------

    def fail(self, message: str, trace: str | None = None) -> None:
        """The gateway's kickInput: record the error (the first one stays), emit it, close the stream."""
        self.gateway_status.setdefault("error", {"error_message": message, "error_time": _ms(time.time())})
        if trace:
            self.event(trace)
        self.event("ai_stream_events", type="error", message=message)
        self.close_soon(message)

    async def _select(self) -> None:
        cfg, net = self.gw.config, self.gw.network
        deadline = self.loop.time() + cfg.selection_timeout_s
        while (lease := net.acquire(self.pipeline, self.orchestrator, include_uris=self.include_uris,
                                    exclude_uris=self.exclude_uris)) is None:
            if self.closed:
                return
            if self.loop.time() >= deadline:
                self.fail(NO_ORCHESTRATORS, trace="gateway_no_orchestrators_available")
                return
            await asyncio.sleep(SELECTION_RETRY_S)
        if self.closed:
            net.release(lease)
            return
        self.lease = lease
        o = lease.orchestrator
        self.faults = net.faults_for(o.address, o.uri, kinds=tuple(k for k in _JOB_FAULTS + _RUN_FAULTS))
        kinds = {f.kind: f for f in self.faults}
        self.lossy = "packet_loss" in kinds  # checked per packet: the fault list only when it can matter
        self.event("orchestrator_selected", orchestrator=o.address, url=o.uri, gpu=lease.gpu_id,
                   cold_start=lease.cold_start, faults=sorted(kinds))
        if "signaling_error" in kinds:
            self.fail(f"orchestrator refused the job: HTTP {kinds['signaling_error'].status} (injected fault)")
            return
        if "signaling_timeout" in kinds or "slow_answer" in kinds:
            await asyncio.sleep((kinds.get("signaling_timeout") or kinds["slow_answer"]).delay_s)
            if "signaling_timeout" in kinds:
                self.fail("orchestrator did not start the job (injected fault)")
                return
        self.runner_start = self.loop.time()
        self.ready_at = self.runner_start + (lease.profile.cold_start_s if lease.cold_start else 0.0)
        self.warmup_left = lease.profile.warmup_frames
        self._spawn(self._report())
        self._spawn(self._watch())

    async def _gather(self) -> None:
        """No video within the gather timeout: "missing video"; a non-H.264 video track: "non-h264 video"."""
        try:
            await asyncio.wait_for(self.first_packet.wait(), self.gw.config.video_gather_timeout_s)
        except asyncio.TimeoutError:
            self.fail("missing video")
            return
        codec = self.tap.codec if self.tap else None
        allowed = self.gw.config.video_codecs
        if codec not in allowed:
            self.event("non_h264_video", codec=codec or (self.tap.unsupported if self.tap else None))
            self.fail("non-h264 video" if allowed == ("H264",) else f"unsupported video codec {codec}")

    async def _ask_keyframes(self) -> None:
        """A PLI to the publisher every ``pli_interval_s`` (go-livepeer's intervalpli interceptor)."""
        while not self.closed:
            await asyncio.sleep(self.gw.config.pli_interval_s)
            if self.tap is not None and self.tap.ssrc is not None:
                await request_keyframe(self.tap.receiver, self.tap.ssrc)

    # --- the runner ----------------------------------------------------------------

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

    def _ingest(self, frame: av.VideoFrame | av.Packet, seq: int, t_in: float, keyframe: bool = False) -> None:
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
        if relay:
            out: av.VideoFrame | av.Packet = frame
        else:
            out = apply_look(frame, self.look, self.lut, black=self._active("black_frames") is not None)
        delay = self._draw_delay()
        due = max(self.start_at + delay, self.last_due)
        self.last_due = due
        index = self._truth(seq, frame.pts, t_in, delay * 1000, None, None)
        if index >= 0:
            self.frames[index][7] = round((self.start_at - t_in) * 1000, 3)
        self.loop.call_at(due, self._emit, out, self.start_at, index, keyframe)

    def _ready_at(self, frame: av.VideoFrame | av.Packet, t_in: float) -> float:
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

    def _encode(self, frame: av.VideoFrame) -> av.Packet | None:
        """The processed frame as H.264 (constrained baseline), once for every viewer; an IDR every output GOP."""
        if self.encoder is None:
            assert self.lease is not None
            gop = max(1, round(self.gw.config.output_gop_s * self.lease.profile.fps_cap))
            enc = av.CodecContext.create("libx264", "w")
            enc.width, enc.height, enc.pix_fmt = frame.width, frame.height, "yuv420p"
            enc.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            enc.framerate = fractions.Fraction(round(self.lease.profile.fps_cap))
            enc.bit_rate = 1_000_000
            enc.profile = "Baseline"
            enc.options = {"preset": "ultrafast", "tune": "zerolatency", "level": "31", "forced-idr": "1",
                           "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1"}
            self.encoder, self._gop = enc, gop
        frame.pict_type = av.video.frame.PictureType.I if self.encoded % self._gop == 0 else \
            av.video.frame.PictureType.NONE
        pts, time_base = frame.pts, frame.time_base
        frame.pts = round(pts * time_base * VIDEO_CLOCK) if pts is not None and time_base else self.encoded
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.encoded += 1
        packets = list(self.encoder.encode(frame))
        if not packets:
            return None
        packet = av.Packet(b"".join(bytes(p) for p in packets))
        packet.pts, packet.time_base = frame.pts, frame.time_base
        packet.is_keyframe = any(p.is_keyframe for p in packets)
        return packet

    def _emit(self, frame: av.VideoFrame | av.Packet, start: float, index: int, keyframe: bool) -> None:
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
        timed = sorted((f for f in self.faults if f.kind in ("disconnect", "orchestrator_swap", "capacity_drop")),
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

    # --- status ------------------------------------------------------------------

    def state(self) -> str:
        now = self.loop.time()
        start = self.runner_start if self.runner_start is not None else self.t0
        ready = self.ready_at if self.ready_at is not None and now >= self.ready_at else None
        return runner_state(RunnerClock(
            now=now, start=start, ready=ready, running=self.closed is None, last_input=self.last_in,
            last_output=self.last_out, params_update=self.params_update,
            last_error=self.last_error[1] if self.last_error else None, last_restart=self.last_restart,
            input_fps=self.in_rate.fps(now, start), output_fps=self.out_rate.fps(now, start)))

    def _report_now(self) -> None:
        """The runner's status event (ai_stream_status), as the gateway stores it."""
        assert self.lease is not None
        now = self.loop.time()
        start = self.runner_start if self.runner_start is not None else self.t0
        state = self.state()
        previous = self.runner_status or {}
        o = self.lease.orchestrator
        self.runner_status = {
            "type": "status", "pipeline": self.pipeline, "start_time": _ms(self.unix(start)), "state": state,
            "last_state_update_time": (previous.get("last_state_update_time") if previous.get("state") == state
                                       else _ms(time.time())),
            "input_status": {"fps": round(self.in_rate.fps(now, start), 2), "last_input_time": _ms(self.unix(self.last_in))},
            "inference_status": {
                "fps": round(self.out_rate.fps(now, start), 2), "last_output_time": _ms(self.unix(self.last_out)),
                "last_params_update_time": _ms(self.unix(self.params_update)), "last_params": self.params,
                "last_params_hash": self.params_hash,
                "last_error": self.last_error[0] if self.last_error else None,
                "last_error_time": _ms(self.unix(self.last_error[1])) if self.last_error else None,
                "last_restart_time": _ms(self.unix(self.last_restart)), "restart_count": self.restart_count},
            "stream_id": self.id, "request_id": self.request_id, "pipeline_id": "",
            "orchestrator_info": {"address": o.address, "url": o.uri},
            "timestamp": _ms(time.time()),
        }

    async def _report(self) -> None:
        """The runner reports every ``status_interval_s`` (ai-runner status_report_interval), from its start."""
        while not self.closed:
            self._report_now()
            await asyncio.sleep(self.gw.config.status_interval_s)

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
        jitter_s = (inbound.jitter / VIDEO_CLOCK) if inbound is not None else 0.0
        loss_pct = 100.0 * lost / (received + lost) if received + lost else 0.0
        last_in, last_out = self.last_in_pts or 0.0, self.last_out_pts or 0.0
        track = {"type": "video", "jitter": round(jitter_s, 6), "packets_lost": lost, "packets_received": received,
                 "packet_loss_pct": round(loss_pct, 3), "rtt": 0,  # aiortc's receiver measures no RTT (pion does)
                 "last_input_ts": round(last_in, 3), "last_output_ts": round(last_out, 3),
                 "latency": round(last_in - last_out, 3)}
        quality = "good" if jitter_s * 1000 <= 50 and loss_pct <= 2 else "bad"  # media/whip_connection.go
        self.gateway_status["ingest_metrics"] = {"stats": {
            "peer_conn_stats": {"ID": transport.id if transport else "",
                                "BytesReceived": getattr(transport, "bytesReceived", 0) if transport else 0,
                                "BytesSent": getattr(transport, "bytesSent", 0) if transport else 0},
            "track_stats": [track], "conn_quality": quality}}

    def status(self) -> dict[str, Any]:
        """``GET /live/video-to-video/{streamId}/status``: the runner's last report plus ``gateway_status``."""
        body = dict(self.runner_status) if self.runner_status else {}
        body["gateway_status"] = dict(self.gateway_status)
        if self._active("malformed_status"):  # a gateway bug, for the tester to report as the gateway's
            body["inference_status"] = "unavailable"
            body["gateway_status"]["ingest_metrics"] = [body["gateway_status"].get("ingest_metrics")]
        return body

    # --- truth ------------------------------------------------------------------

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
        mid = lambda xs: xs[len(xs) // 2] if xs else None  # noqa: E731
        return {
            **self.summary(),
            "config_delay": self.lease.profile.delay.model_dump() if self.lease else None,
            "fps_cap": round(self.fps_cap(), 3),
            "delay_ms_median": mid(delays), "delay_drawn_ms_median": mid(drawn),
            "residence_ms_median": mid(residence),
            "prompts": [{"t": t, "prompt": p, "params_hash": h} for t, p, h in self.prompts],
            "events": [{"t": t, "type": k, **d} for t, k, d in self.events],  # data keys never 't'/'type'
            "frames": [{"seq": s, "pts": p, "t_in": t, "queued_ms": q, "delay_drawn_ms": dr, "delay_ms": da,
                        "dropped": r, "residence_ms": rs} for s, p, t, dr, da, r, rs, q in self.frames],
            # per viewer, per frame sent: [output pts (90 kHz), when its last packet left (time.monotonic())]
            "egress": [[[p, round(t, 6)] for p, t in track.egress] for _, track in self.whep],
        }

    # --- teardown ------------------------------------------------------------------

    def close_soon(self, reason: str) -> None:
        if self._closing is None and not self.closed:
            self._closing = asyncio.ensure_future(self.close(reason))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self.closed_unix = round(time.time(), 3)
        self.closed_at = self.loop.time()
        self.ended.set()
        # go-livepeer: a close without an error is recorded as "whip disconnected"
        self.gateway_status.setdefault("error", {"error_message": "whip disconnected", "error_time": _ms(time.time())})
        self.event("gateway_ingest_stream_closed", reason=reason)
        if self.runner_status is not None:
            self._report_now()
        self.gw.released(self)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for pc, track in self.whep:
            track.push(None)
            await pc.close()
        await self.pc.close()


_JOB_FAULTS = ("signaling_error", "slow_answer", "signaling_timeout")
_RUN_FAULTS = ("output_stall", "disconnect", "black_frames", "fps_drop", "orchestrator_swap", "capacity_drop",
               "malformed_status", "packet_loss")
