"""One measured test session: publish over WHIP, watch over WHEP, time everything.

``run_probe(spec)`` is plain asyncio (it knows nothing of Ray) and never
raises for anything the gateway or the network does: every failure lands in
the result's outcome with the phase it happened in. On every exit path
(success, failure, timeout, cancellation) both peer connections close and
the stream is stopped at the gateway.

The sender sends a pre-encoded clip (fleet.media; H.264 constrained baseline
by default, as go-livepeer accepts nothing else). The receiver does not
decode: a tap below aiortc's jitter buffer (fleet.rtp) times each output
frame at the arrival of its last packet.

The gateway answers the offer before it has an orchestrator, so the status is
read from the answer on: when the stream ends early, ``gateway_status.error``
says why ("no orchestrators available" makes the session
``skipped_no_capacity``, never the orchestrator's failure; NaaP's excused
errors are marked ``excused``). Client-side events are named ``fleet_*`` so
they are never mistaken for the network's ``stream_trace`` events.

Frames are decoded only in short windows (until the latency alignment is
found, around each prompt switch until its effect is seen, and one second in
every ``check_every_s``), starting at a keyframe that is asked for with a PLI
when needed; docs/METRICS.md gives the cost.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import av
import httpx
import numpy as np
from aiortc import RTCSessionDescription

from fleet.media import H264_PROFILE_LEVEL_ID, Clip, PacketTrack
from fleet.probe.adapters import USER_AGENT, ProbeFailure, adapter_for, classify_gateway_error, gateway_error
from fleet.probe.latency import Aligner, StepDetector, lag_is_exact
from fleet.probe.looplag import LoopMonitor
from fleet.probe.timing import PLAYABLE_FRAMES, analyse, suspect_frames
from fleet.rtp import VIDEO_CLOCK, FrameTap, TapFrame
from fleet.webrtc import IceServer, codecs_named, new_peer_connection, on_keyframe_request, request_keyframe

__all__ = ["OUTCOMES", "PHASES", "ProbeOptions", "ProbeResult", "ProbeSpec", "PromptChange", "new_http_client",
           "run_probe"]

OUTCOMES = ("ok", "degraded", "failed", "skipped_no_capacity")
PHASES = ("signaling", "ice", "dtls", "media", "pipeline", "capacity", "timeout", "tester")

BLACK_LUMA = 24.0             # a decoded frame this dark, with neutral chroma, is black
BLACK_RUN = 10                # decoded black frames in a row that make the output "black"
EFFECT_DELTA = 3.0            # mean U or V moving this much is a visible look change
EFFECT_FRAMES = 3             # ... for this many decoded frames in a row
PLI_EVERY_S = 0.5
WINDOW_BEFORE_SWITCH_S = 1.0
WINDOW_AFTER_EFFECT_S = 0.5
WINDOW_MAX_S = 10.0
CAP_GRACE_S = 2.0             # the session ends itself at max_s; this backstop fires only if it cannot
WHEP_RETRY_S = 0.25           # WHEP 404 "Stream not found" while the gateway still selects: ask again this often
DIAGNOSE_S = 3.0              # after an early end, wait this long at most for the gateway's error in its status
TEARDOWN_VERIFY_S = 3.0       # after closing, wait this long at most for the status to show the stream ended
STATUS_POLL_S = 0.25          # status reads while diagnosing or verifying
EVENT_PREFIX = "fleet_"       # client-side events; the network's stream_trace names are the gateway's own
_GATEWAY_ICE: dict[str, tuple[IceServer, ...]] = {}  # per WHIP base URL: the ICE servers its Link headers named


@dataclass(frozen=True)
class PromptChange:
    at_s: float                 # seconds after the session's request
    params: dict[str, Any]
    prompt_id: str = ""
    category: str = ""


@dataclass(frozen=True)
class ProbeOptions:
    ice_timeout_s: float = 15.0
    first_frame_timeout_s: float | None = None   # None: max(2 x max_startup_s, 20 s)
    http_timeout_s: float = 10.0
    status_every_s: float = 2.0
    check_every_s: float = 5.0                   # a one-second decode window this often
    decode: Literal["windows", "all"] = "windows"
    stall_fail_s: float = 5.0                    # output silent this long at the end: failed
    max_latency_s: float = 20.0
    bandwidth_feedback: bool = False             # send REMB like a browser (costs ~10 % of a session's CPU)
    check_window_s: float = 0.5
    teardown_timeout_s: float = 5.0
    verify_tls: bool = True
    ice_servers: tuple[IceServer, ...] = ()      # the scenario's STUN/TURN servers (credentials resolved)
    use_gateway_ice_servers: bool = True         # also those a gateway named in WHIP Link headers (RFC 9725)
    keep_timeline: bool = False                  # keep every output frame's (RTP ts, arrival) in the result
    calibrate_max_s: float = 15.0                # decode every frame at most this long looking for the latency


@dataclass(frozen=True)
class ProbeSpec:
    gateway_url: str
    dialect: str
    pipeline: str
    clip: Clip
    prompts: tuple[PromptChange, ...]            # the first applies at start (its at_s is ignored)
    duration_s: float
    max_s: float = 300.0
    token: str | None = None                     # resolved by the caller from the scenario's token_env
    orchestrator: str | None = None              # the orchestrator's service URI (go-livepeer matches a substring)
    session_id: str = ""
    max_startup_s: float = 10.0
    min_output_fps: float = 12.0
    max_g2g_latency_ms: float = 3000.0
    max_jitter_coeff: float = 0.1
    max_freeze_s: float = 2.0
    options: ProbeOptions = field(default_factory=ProbeOptions)
    on_stream: Callable[[str, str], None] | None = None  # told (method, url) that stops the stream, once it exists

    def __repr__(self) -> str:  # never print the token
        return f"ProbeSpec({self.session_id!r}, {self.dialect}, {self.gateway_url})"


@dataclass
class ProbeResult:
    session_id: str
    dialect: str
    gateway: str
    stream_id: str | None = None       # the streamId the gateway keys its status by
    stream_name: str | None = None
    request_id: str | None = None      # the gateway's request id: the network's join key
    pipeline_id: str | None = None
    codec: str | None = None           # what the probe sent
    outcome: str = "ok"
    error_class: str | None = None
    error_phase: str | None = None
    error_detail: str | None = None
    excused: bool = False              # a failure NaaP does not count against the orchestrator
    gateway_error: str | None = None   # gateway_status.error.error_message, as the gateway said it
    reasons: list[str] = field(default_factory=list)   # why degraded
    started_unix: float = 0.0
    duration_s: float = 0.0
    # phases (ms from the stream request unless named otherwise)
    offer_ms: float | None = None
    signaling_ms: float | None = None
    ice_ms: float | None = None          # SDP answer -> ICE connected
    dtls_ms: float | None = None         # ICE connected -> DTLS connected
    first_packet_ms: float | None = None
    whep_signaling_ms: float | None = None
    startup_s: float | None = None       # first output frame
    playable_s: float | None = None      # PLAYABLE_FRAMES output frames
    # output
    frames_sent: int = 0
    frames_received: int = 0
    output_fps: float | None = None
    jitter_coeff: float | None = None    # steady state, the tester's stalls left out (fleet.probe.timing)
    jitter_coeff_p50: float | None = None  # over 5 s windows
    jitter_coeff_p95: float | None = None
    jitter_intervals: int = 0
    jitter_suspect_intervals: int = 0    # left out: stamped while the tester's own loop was stalled
    freeze_count: int = 0
    freeze_s: float = 0.0
    black_frames: int = 0
    decoded_frames: int = 0
    # latency
    latency_method: str | None = None
    g2g_latency_ms: float | None = None
    g2g_latency_p95_ms: float | None = None
    latency_samples: list[tuple[float, float, str]] = field(default_factory=list)  # (t_s, ms, method)
    prompt_switch_ms: list[float | None] = field(default_factory=list)
    # transport
    packets_received: int = 0
    packet_loss_pct: float | None = None        # egress (gateway -> tester), from sequence numbers
    ingest_packet_loss_pct: float | None = None  # tester -> gateway, from the gateway's RTCP receiver reports
    rtt_ms: float | None = None
    pacing_late_ms_mean: float | None = None
    pacing_late_ms_max: float | None = None
    keyframes_on_request: int = 0   # keyframe requests (PLI) from the gateway answered by jumping to a keyframe
    # the tester's own health over the session (fleet.probe.looplag)
    tester_loop_lag_ms_mean: float | None = None
    tester_loop_lag_ms_max: float | None = None
    tester_loop_busy_pct: float | None = None   # the event loop thread's CPU share, percent of one core
    # gateway's view (gateway_status.ingest_metrics.stats.track_stats, last read)
    gateway_ingest_latency_s: float | None = None
    gateway_ingest_jitter_ms: float | None = None
    gateway_ingest_packet_loss_pct: float | None = None
    gateway_ingest_rtt_ms: float | None = None
    gateway_conn_quality: str | None = None
    teardown_verified: bool | None = None   # the status showed the stream ended after the teardown
    gateway_state: str | None = None
    restart_count: int | None = None
    orchestrator_address: str | None = None
    orchestrator_url: str | None = None
    gpu_id: str | None = None
    gpu_name: str | None = None
    swapped: bool = False
    status_samples: list[dict[str, Any]] = field(default_factory=list)
    per_second: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    # with keep_timeline: per output frame (RTP timestamp from the first frame, 90 kHz; arrival, time.monotonic())
    timeline: list[tuple[int, float]] = field(default_factory=list)
    timeline_suspect: list[int] = field(default_factory=list)  # indices stamped while the tester's loop stalled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_http_client(options: ProbeOptions | None = None) -> httpx.AsyncClient:
    """An HTTP client for probe sessions (share one per process and per TLS setting)."""
    options = options or ProbeOptions()
    return httpx.AsyncClient(timeout=httpx.Timeout(options.http_timeout_s), verify=options.verify_tls,
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))


def _obj(parent: dict[str, Any], key: str, complain: Callable[[str], None]) -> dict[str, Any]:
    """``parent[key]`` when it is an object; absent gives {}; any other type is a protocol error, also {}."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        complain(f"{key} is a {type(value).__name__}, not an object")
        return {}
    return value


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


class _Probe:
    """The state of one running session."""

    def __init__(self, spec: ProbeSpec, stop: asyncio.Event | None = None) -> None:
        self.spec = spec
        self.stop = stop or asyncio.Event()
        self.opt = spec.options
        self.r = ProbeResult(spec.session_id, spec.dialect, spec.gateway_url)
        self.t0 = time.monotonic()
        self.r.started_unix = time.time()
        self.track = PacketTrack(spec.clip)
        self.base = spec.gateway_url.rstrip("/")
        ice = tuple(self.opt.ice_servers) + (_GATEWAY_ICE.get(self.base, ()) if self.opt.use_gateway_ice_servers else ())
        self.pc_in = new_peer_connection(ice)
        self.pc_out = new_peer_connection(ice)
        self.adapter = adapter_for(spec.dialect, spec.gateway_url, spec.pipeline, spec.token, spec.orchestrator)
        self.ice_done = asyncio.Event()
        self.dtls_done = asyncio.Event()
        self.broken = asyncio.Event()      # a peer connection failed or was closed by the far end
        self.broken_why = ""
        self.broken_error = ""
        self.first_frame = asyncio.Event()
        self.t_answer: float | None = None
        self.t_ice: float | None = None
        # output frames
        self.arrivals: list[float] = []
        self.out_ts: list[int] = []        # RTP timestamps relative to the first output frame
        self.ts0: int | None = None
        self.tap: FrameTap | None = None
        # decoding
        self.decoder: av.CodecContext | None = None
        self.windows: list[tuple[float, float]] = []  # (start, end) monotonic
        self.switch_windows: dict[int, tuple[float, float]] = {}  # per prompt switch, until its effect is seen
        self.calibrating = True
        self.aligned_at_steps = 0          # detected output steps when the alignment last ran
        self.last_pli = 0.0
        self.prev_decoded_index = -2
        self.detector = StepDetector()
        self.black_run = 0
        self.chroma: list[tuple[float, float, float]] = []  # (arrival, mean U, mean V) of decoded frames
        self.pending_effects: list[tuple[int, float]] = []  # (update index, request time)
        # a latency longer than the clip's loop would be ambiguous (the steps repeat)
        max_latency = min(self.opt.max_latency_s, 0.9 * spec.clip.frames / spec.clip.fps)
        self.aligner = Aligner(tolerance=2.5 / spec.clip.fps, max_latency=max_latency)
        self.recv_aligner = Aligner(tolerance=0.3, max_latency=max_latency)
        self.closing = False
        self.status_task: asyncio.Task | None = None
        self.t_end: float | None = None
        self.loop_monitor = LoopMonitor.for_running_loop()
        self.lag_mark = self.loop_monitor.acquire()

    # --- bookkeeping -----------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, **data: Any) -> None:
        self.r.events.append((round(self.now(), 4), EVENT_PREFIX + kind, data))

    # --- receive side ----------------------------------------------------------------

    def on_frame(self, f: TapFrame) -> None:
        if self.ts0 is None:
            self.ts0 = f.timestamp
            self.first_frame.set()
        index = len(self.arrivals)
        self.arrivals.append(f.arrival)
        self.out_ts.append(f.timestamp - self.ts0)
        if self.tap is not None and self.tap.unsupported:
            return
        if self._want_decode(f.arrival):
            self._decode(f, index)
        elif self.decoder is not None:
            self.decoder = None
            self.detector.reset_continuity()

    def _want_decode(self, now: float) -> bool:
        if self.calibrating and now - self.t0 > self.opt.calibrate_max_s:
            self.calibrating = False  # no alignment in time (an output without brightness steps): give up
            self.event("latency_aligned", method=self.r.latency_method, steps=len(self.detector.steps), exact=False)
        if self.opt.decode == "all" or self.calibrating or self.pending_effects:
            return True
        self.windows = [w for w in self.windows if w[1] > now]
        return any(start <= now < end for start, end in (*self.windows, *self.switch_windows.values()))

    def _decode(self, f: TapFrame, index: int) -> None:
        if not f.complete:
            self.decoder = None
            self.detector.reset_continuity()
        if self.decoder is None:
            if not (f.keyframe and f.complete):
                self._ask_keyframe(f.arrival)
                return
            codec = self.tap.codec if self.tap is not None else None
            self.decoder = av.CodecContext.create("h264" if codec == "H264" else "vp8", "r")
            # one frame out per packet in, at once: frame threads or reorder guesses would hand back an
            # earlier frame and shift every step the latency alignment sees
            self.decoder.thread_count = 1
            self.decoder.flags |= av.codec.context.Flags.low_delay
        try:
            frames = self.decoder.decode(av.Packet(f.data))
        except av.FFmpegError:
            self.decoder = None
            self.detector.reset_continuity()
            return
        for frame in frames:
            self._look_at(frame, f, index)

    def _ask_keyframe(self, now: float) -> None:
        if self.tap is None or self.tap.ssrc is None or now - self.last_pli < PLI_EVERY_S:
            return
        self.last_pli = now
        asyncio.ensure_future(request_keyframe(self.tap.receiver, self.tap.ssrc))

    def _look_at(self, frame: av.VideoFrame, f: TapFrame, index: int) -> None:
        self.r.decoded_frames += 1
        h, w = frame.height, frame.width
        y_plane, u_plane, v_plane = frame.planes[0], frame.planes[1], frame.planes[2]
        y = np.frombuffer(y_plane, np.uint8).reshape(h, y_plane.line_size)[::4, :w:4]
        u = np.frombuffer(u_plane, np.uint8).reshape(h // 2, u_plane.line_size)[::4, : w // 2:4]
        v = np.frombuffer(v_plane, np.uint8).reshape(h // 2, v_plane.line_size)[::4, : w // 2:4]
        luma, mu, mv = float(y.mean()), float(u.mean()), float(v.mean())
        consecutive = index == self.prev_decoded_index + 1
        self.prev_decoded_index = index
        black = luma < BLACK_LUMA and abs(mu - 128) < 8 and abs(mv - 128) < 8
        self.black_run = self.black_run + 1 if black else 0
        if black:
            self.r.black_frames += 1
            if self.black_run == BLACK_RUN:
                self.event("black_output")
        else:
            self.detector.frame(self.out_ts[index] / VIDEO_CLOCK, f.arrival, luma, consecutive)
        self.chroma.append((f.arrival, mu, mv))
        if len(self.chroma) > 300:
            del self.chroma[:100]
        self._check_effects()
        if not self.calibrating:
            return
        exact = False
        steps = len(self.detector.steps)
        if steps >= 3 and steps != self.aligned_at_steps:  # align again only when a new step was seen
            self.aligned_at_steps = steps
            exact = self._align()
        if exact:  # found: decoding goes back to short windows (giving up is _want_decode's, on the clock)
            self.calibrating = False
            self.event("latency_aligned", method=self.r.latency_method, steps=steps, exact=exact)

    def _input_steps(self) -> list[tuple[float, int, float]]:
        sent = self.track.sent
        return [(self.spec.clip.pts(n) / VIDEO_CLOCK, d, sent[n]) for n, d in self.track.level_steps(len(sent))]

    def _align(self) -> bool:
        """Find the alignment; True once it is exact (pinned to one frame)."""
        inputs = self._input_steps()
        outs = [(t, d, a) for t, a, d in self.detector.steps]
        if self.aligner.update(outs, inputs):
            self.r.latency_method = "rtp_timestamp"
            return lag_is_exact(self.aligner.lag, self.detector.prev, inputs, self.aligner.matched,
                                1 / self.spec.clip.fps)
        recv = [(a, d, a) for _, a, d in self.detector.steps]
        recv_in = [(s, d, s) for _, d, s in inputs]
        if self.recv_aligner.update(recv, recv_in):
            self.r.latency_method = "brightness_step"
            return True
        self.r.latency_method = None
        return False

    def _check_effects(self) -> None:
        """For each pending prompt switch: has the look moved away from the second before it?"""
        done = []
        for i, (k, t_req) in enumerate(self.pending_effects):
            if time.monotonic() - t_req > WINDOW_MAX_S:
                done.append(i)
                self.switch_windows.pop(k, None)
                continue
            before = [(u, v) for a, u, v in self.chroma if t_req - WINDOW_BEFORE_SWITCH_S <= a < t_req]
            after = [(a, u, v) for a, u, v in self.chroma if a >= t_req]
            if not before or len(after) < EFFECT_FRAMES:
                continue
            bu = statistics.fmean(u for u, _ in before)
            bv = statistics.fmean(v for _, v in before)
            run = 0
            for j, (_, u, v) in enumerate(after):
                run = run + 1 if max(abs(u - bu), abs(v - bv)) > EFFECT_DELTA else 0
                if run == EFFECT_FRAMES:
                    first = after[j - EFFECT_FRAMES + 1][0]
                    self.r.prompt_switch_ms[k] = round((first - t_req) * 1000, 3)
                    self.event("prompt_effect", index=k, ms=self.r.prompt_switch_ms[k])
                    self.windows.append((first, first + WINDOW_AFTER_EFFECT_S))
                    self.switch_windows.pop(k, None)  # seen: decode no longer than the short window after it
                    done.append(i)
                    break
        for i in reversed(done):
            self.pending_effects.pop(i)

    # --- the session ---------------------------------------------------------------

    def _wire(self) -> None:
        @self.pc_in.on("iceconnectionstatechange")
        def on_ice() -> None:
            state = self.pc_in.iceConnectionState
            if state in ("completed", "connected") and not self.ice_done.is_set():
                self.t_ice = time.monotonic()
                self.ice_done.set()
            elif state == "failed":
                self._broken("ice failed", "ice_failed")

        @self.pc_in.on("connectionstatechange")
        def on_in() -> None:
            state = self.pc_in.connectionState
            if state == "connected":
                self.dtls_done.set()
            elif state in ("failed", "closed") and not self.closing:
                self._broken(f"ingest connection {state}")

        @self.pc_out.on("connectionstatechange")
        def on_out() -> None:
            if self.pc_out.connectionState in ("failed", "closed") and not self.closing:
                self._broken(f"egress connection {self.pc_out.connectionState}")

    def _broken(self, why: str, error: str = "connection_lost") -> None:
        if not self.broken.is_set():
            self.broken_why, self.broken_error = why, error
            self.event("connection_lost", why=why)
            self.broken.set()

    async def _wait(self, event: asyncio.Event, timeout: float, phase: str, error: str) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in (event, self.broken, self.stop)]
        try:
            await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if event.is_set():
            return
        if self.stop.is_set():
            raise ProbeFailure("tester", "stopped", "the campaign was stopped")
        if self.broken.is_set():
            raise ProbeFailure(phase, self.broken_error, self.broken_why)
        raise ProbeFailure(phase, error, f"not within {timeout:g} s")

    async def run(self, client: httpx.AsyncClient) -> None:
        spec, opt, r = self.spec, self.opt, self.r
        self._wire()
        sender = self.pc_in.addTransceiver(self.track, direction="sendonly")
        on_keyframe_request(sender.sender, self.track.request_keyframe)  # a PLI: jump to the next keyframe
        if spec.clip.codec == "h264":
            sender.setCodecPreferences(codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID))
        else:
            sender.setCodecPreferences(codecs_named("video", "VP8"))
        r.codec = spec.clip.codec
        recv = self.pc_out.addTransceiver("video", direction="recvonly")
        recv.setCodecPreferences(codecs_named("video", "H264", "VP8"))
        self.tap = FrameTap(recv.receiver, self.on_frame, decode=False, bandwidth_feedback=opt.bandwidth_feedback)

        t = time.monotonic()
        await self.pc_in.setLocalDescription(await self.pc_in.createOffer())
        r.offer_ms = _ms(time.monotonic() - t)
        self.event("whip_offer_sent")
        started = await self.adapter.start(client, self.pc_in.localDescription.sdp, spec.prompts[0].params)
        self.t_answer = time.monotonic()
        r.signaling_ms = _ms(self.t_answer - self.t0)
        r.stream_id = started.stream_id or self.adapter.name
        r.stream_name = self.adapter.name
        r.request_id = started.request_id
        if started.ice_servers:
            _GATEWAY_ICE[self.base] = tuple(started.ice_servers)
        self.status_task = asyncio.ensure_future(self._poll_status(client))
        stop_req = self.adapter.stop_request()
        if spec.on_stream is not None and stop_req is not None:
            spec.on_stream(*stop_req)
        try:
            await self.pc_in.setRemoteDescription(RTCSessionDescription(started.answer_sdp, "answer"))
        except (ValueError, AttributeError) as exc:
            raise ProbeFailure("signaling", "bad_answer", str(exc)[:120]) from None

        whep = asyncio.ensure_future(self._whep(client, started.whep_url))
        try:
            await self._wait(self.ice_done, opt.ice_timeout_s, "ice", "ice_timeout")
            r.ice_ms = _ms(self.t_ice - self.t_answer)
            await self._wait(self.dtls_done, opt.ice_timeout_s, "dtls", "dtls_timeout")
            r.dtls_ms = _ms(time.monotonic() - self.t_ice)
            await whep
        finally:
            whep.cancel()
        first_timeout = opt.first_frame_timeout_s or max(2 * spec.max_startup_s, 20.0)
        await self._wait(self.first_frame, first_timeout - self.now(), "pipeline", "no_output")
        self.event("first_output_frame")

        tasks = [asyncio.ensure_future(self._switch_prompts(client)), asyncio.ensure_future(self._checks())]
        try:
            end = min(spec.duration_s, spec.max_s)
            waiters = [asyncio.ensure_future(e.wait()) for e in (self.broken, self.stop)]
            try:
                await asyncio.wait(waiters, timeout=max(0.0, end - self.now()), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            if self.stop.is_set() and not self.broken.is_set():
                raise ProbeFailure("tester", "stopped", "the campaign was stopped")
            for task in tasks:  # a failed update is the session's failure
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if self.broken.is_set():
                raise ProbeFailure("media", "disconnected", self.broken_why)
        finally:
            for task in tasks:
                task.cancel()

    async def _whep(self, client: httpx.AsyncClient, url: str) -> None:
        """Subscribe; a 404 "Stream not found" means the gateway has no output yet (it is still selecting)."""
        await self.pc_out.setLocalDescription(await self.pc_out.createOffer())
        deadline = time.monotonic() + (self.opt.first_frame_timeout_s or max(2 * self.spec.max_startup_s, 20.0))
        while True:
            t = time.monotonic()
            try:
                resp = await client.post(url, content=self.pc_out.localDescription.sdp,
                                         headers={"Content-Type": "application/sdp", "User-Agent": USER_AGENT,
                                                  **self.adapter.auth()})
            except httpx.HTTPError as exc:
                raise ProbeFailure("signaling", "whep_transport", type(exc).__name__) from None
            retry = resp.status_code == 404 and "not found" in resp.text.lower() and "malformed" not in resp.text.lower()
            if not retry or time.monotonic() >= deadline or self.broken.is_set() or self.stop.is_set():
                break
            broken = asyncio.ensure_future(self.broken.wait())
            try:
                await asyncio.wait([broken], timeout=WHEP_RETRY_S)
            finally:
                broken.cancel()
        if resp.status_code not in (200, 201):
            raise ProbeFailure("signaling", f"whep_http_{resp.status_code}", resp.text.strip()[:200])
        self.r.whep_signaling_ms = _ms(time.monotonic() - t)
        try:
            await self.pc_out.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        except (ValueError, AttributeError) as exc:
            raise ProbeFailure("signaling", "bad_whep_answer", str(exc)[:120]) from None

    async def _switch_prompts(self, client: httpx.AsyncClient) -> None:
        self.r.prompt_switch_ms = [None] * (len(self.spec.prompts) - 1)
        for k, change in enumerate(self.spec.prompts[1:]):
            wait = change.at_s - self.now()
            if wait > WINDOW_BEFORE_SWITCH_S:
                await asyncio.sleep(wait - WINDOW_BEFORE_SWITCH_S)
            start = time.monotonic()
            self.switch_windows[k] = (start, start + WINDOW_BEFORE_SWITCH_S + WINDOW_MAX_S)
            await asyncio.sleep(max(0.0, change.at_s - self.now()))
            t_req = time.monotonic()
            await self.adapter.update(client, change.params)
            self.event("params_update", index=k, prompt_id=change.prompt_id, category=change.category)
            self.pending_effects.append((k, t_req))

    async def _poll_status(self, client: httpx.AsyncClient) -> None:
        while True:
            await self._read_status(client)
            await asyncio.sleep(self.opt.status_every_s)

    async def _fetch_status(self, client: httpx.AsyncClient) -> Any:
        """The gateway's status of the stream, or None (none kept, or unreachable: status is best effort;
        a body that is not JSON is the gateway's protocol error)."""
        try:
            return await self.adapter.status(client)
        except ProbeFailure as f:
            if f.error == "bad_json":
                self._bad_status(f"the status is not JSON: {f.detail}")
            return None

    async def _read_status(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        status = await self._fetch_status(client)
        if status:
            self._status(status)
        return status

    async def diagnose(self, client: httpx.AsyncClient) -> str | None:
        """The gateway's own error for an early end, waiting for it up to ``DIAGNOSE_S`` (selection may still run)."""
        deadline = time.monotonic() + DIAGNOSE_S
        while not self.r.gateway_error and time.monotonic() < deadline:
            await self._read_status(client)
            if not self.r.gateway_error:
                await asyncio.sleep(STATUS_POLL_S)
        return self.r.gateway_error

    async def _checks(self) -> None:
        """A short decode window every ``check_every_s``: black output, the look, the alignment."""
        while self.opt.check_every_s:
            await asyncio.sleep(self.opt.check_every_s)
            start = time.monotonic()
            self.windows.append((start, start + self.opt.check_window_s))

    def _status(self, s: Any) -> None:
        """One status read. A body of the wrong shape is the gateway's protocol error (recorded, the
        session degraded with ``gateway_protocol``), never the tester's: the values it does hold are kept."""
        if not isinstance(s, dict):
            self._bad_status(f"the status is a {type(s).__name__}, not an object")
            return
        self.r.gateway_error = gateway_error(s) or self.r.gateway_error
        gw = _obj(s, "gateway_status", self._bad_status)
        stats = _obj(_obj(gw, "ingest_metrics", self._bad_status), "stats", self._bad_status)
        tracks = stats.get("track_stats") or []
        if not isinstance(tracks, list):
            self._bad_status("ingest_metrics.stats.track_stats is not a list")
            tracks = []
        tracks = [t for t in tracks if isinstance(t, dict) and t.get("type") == "video"]
        if tracks:
            t = tracks[0]
            self.r.gateway_ingest_latency_s = _num(t.get("latency"))
            jitter = _num(t.get("jitter"))
            self.r.gateway_ingest_jitter_ms = None if jitter is None else round(jitter * 1000, 3)
            self.r.gateway_ingest_packet_loss_pct = _num(t.get("packet_loss_pct"))
            rtt = _num(t.get("rtt"))  # a Go time.Duration: nanoseconds
            self.r.gateway_ingest_rtt_ms = None if rtt is None else round(rtt / 1e6, 3)
        if isinstance(stats.get("conn_quality"), str):
            self.r.gateway_conn_quality = stats["conn_quality"]
        if "state" not in s:
            return  # only the gateway's part: the runner has not reported yet
        self.r.request_id = _str(s.get("request_id")) or self.r.request_id
        self.r.pipeline_id = _str(s.get("pipeline_id")) or self.r.pipeline_id
        inf = _obj(s, "inference_status", self._bad_status)
        orch = _obj(s, "orchestrator_info", self._bad_status)
        address = (_str(orch.get("address")) or "").lower()
        sample = {"t_s": round(self.now(), 3), "state": _str(s.get("state")),
                  "input_fps": _num(_obj(s, "input_status", self._bad_status).get("fps")),
                  "inference_fps": _num(inf.get("fps")), "restart_count": _int(inf.get("restart_count")),
                  "last_error": _str(inf.get("last_error")), "orchestrator": address or None}
        if self.r.orchestrator_address and address and address != self.r.orchestrator_address:
            self.r.swapped = True
            self.event("orchestrator_swap", old=self.r.orchestrator_address, new=address)
        # NaaP keys orchestrators by lower-cased address; go-livepeer leaves it empty without ticket params
        self.r.orchestrator_address = address or self.r.orchestrator_address
        self.r.orchestrator_url = _str(orch.get("url")) or self.r.orchestrator_url
        if sample["state"] != self.r.gateway_state:
            self.event("status_change", state=sample["state"])
        self.r.gateway_state = sample["state"]
        self.r.restart_count = sample["restart_count"]
        self.r.status_samples.append(sample)

    def _bad_status(self, why: str) -> None:
        if "gateway_protocol" not in self.r.reasons:
            self.r.reasons.append("gateway_protocol")
            self.event("bad_status", detail=why[:200])

    # --- teardown and results --------------------------------------------------------

    async def rtcp(self) -> None:
        """Loss and RTT from RTCP, read before the connections close."""
        try:
            stats = await asyncio.wait_for(self.pc_in.getStats(), 2.0)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stats are best effort
            return
        for s in stats.values():
            if s.type == "remote-inbound-rtp":
                if getattr(s, "roundTripTime", None) is not None:
                    self.r.rtt_ms = round(s.roundTripTime * 1000, 3)
                sent = self.track and len(self.track.sent)
                if sent and getattr(s, "packetsLost", None) is not None:
                    self.r.ingest_packet_loss_pct = round(100 * s.packetsLost / max(1, s.packetsLost + sent), 3)

    async def teardown(self, client: httpx.AsyncClient) -> None:
        """Close both peer connections (that ends a go-livepeer stream), call the dialect's stop if it has
        one, then check in the status that the gateway saw the end."""
        self.closing = True
        if self.t_end is None:
            self.t_end = time.monotonic()
        if self.status_task is not None:
            self.status_task.cancel()
        self.track.stop()
        steps = [self.pc_out.close(), self.pc_in.close(), self.adapter.stop(client)]
        for step in steps:
            try:
                await asyncio.wait_for(step, self.opt.teardown_timeout_s)
            except (asyncio.TimeoutError, ProbeFailure, httpx.HTTPError, ConnectionError) as exc:
                self.event("teardown_error", error=type(exc).__name__)
        if self.t_answer is not None:
            self.r.teardown_verified = await self._verify_ended(client)
        self.event("teardown_done", verified=self.r.teardown_verified)

    async def _verify_ended(self, client: httpx.AsyncClient) -> bool:
        """The status shows the stream ended (an error recorded, OFFLINE, or no status any more)."""
        deadline = time.monotonic() + TEARDOWN_VERIFY_S
        while True:
            status = await self._fetch_status(client)  # not recorded: the end we caused is no session error
            if status is None or gateway_error(status) or status.get("state") == "OFFLINE":
                return True
            if not isinstance(status, dict) or time.monotonic() >= deadline:  # a wrong shape proves nothing
                return False
            await asyncio.sleep(STATUS_POLL_S)

    def finish(self) -> ProbeResult:
        r = self.r
        end = self.t_end if self.t_end is not None else time.monotonic()
        r.duration_s = round(end - self.t0, 3)
        r.frames_sent = len(self.track.sent)
        r.frames_received = len(self.arrivals)
        if self.track.sent:
            r.first_packet_ms = _ms(self.track.start - self.t0) if self.track.start else None
            r.pacing_late_ms_mean = _ms(self.track.late_s_total / len(self.track.sent))
            r.pacing_late_ms_max = _ms(self.track.late_s_max)
            r.keyframes_on_request = self.track.keyframe_jumps
        if self.tap is not None:
            r.packets_received = self.tap.packets
            if self.tap.packets_expected:
                r.packet_loss_pct = round(100 * self.tap.packets_lost / self.tap.packets_expected, 3)
            if self.tap.unsupported:
                r.reasons.append(f"output codec {self.tap.unsupported} is not measured")
        a = self.arrivals
        if a:
            r.startup_s = round(a[0] - self.t0, 4)
            if len(a) >= PLAYABLE_FRAMES:
                r.playable_s = round(a[PLAYABLE_FRAMES - 1] - self.t0, 4)
        lag = self.loop_monitor.since(self.lag_mark)
        r.tester_loop_lag_ms_mean, r.tester_loop_lag_ms_max, r.tester_loop_busy_pct = \
            lag.mean_ms, lag.max_ms, lag.busy_pct
        suspect = self.loop_monitor.suspect_windows(a[0], a[-1]) if a else []
        if len(a) >= 2:
            timing = analyse(a, end=None if self.broken.is_set() else end, suspect=suspect)
            r.output_fps, r.jitter_coeff = timing.output_fps, timing.jitter_coeff
            r.jitter_coeff_p50, r.jitter_coeff_p95 = timing.jitter_coeff_p50, timing.jitter_coeff_p95
            r.jitter_intervals, r.jitter_suspect_intervals = timing.jitter_intervals, timing.jitter_suspect_intervals
            r.freeze_count, r.freeze_s = timing.freeze_count, timing.freeze_s
        self._latency()
        self._per_second()
        if self.opt.keep_timeline:
            r.timeline = list(zip(self.out_ts, self.arrivals))
            r.timeline_suspect = suspect_frames(a, suspect)
        self.loop_monitor.release()
        return r

    def _latency(self) -> None:
        r, clip = self.r, self.spec.clip
        if self.calibrating and len(self.detector.steps) >= 3:
            self._align()
        samples: list[tuple[float, float, str]] = []
        sent = self.track.sent
        if r.latency_method == "rtp_timestamp" and self.aligner.lag is not None:
            lag = self.aligner.lag
            for ts, arrival in zip(self.out_ts, self.arrivals):
                exact = (ts / VIDEO_CLOCK - lag) * clip.fps
                n = round(exact)
                if abs(exact - n) < 0.1 and 0 <= n < len(sent):
                    samples.append((round(arrival - self.t0, 4), round((arrival - sent[n]) * 1000, 3), "rtp_timestamp"))
        elif r.latency_method == "brightness_step":
            inputs = self._input_steps()
            for (_, arrival, _), k in zip(self.detector.steps, self.recv_aligner.matched):
                samples.append((round(arrival - self.t0, 4), round((arrival - inputs[k][2]) * 1000, 3),
                                "brightness_step"))
        r.latency_samples = samples
        values = [ms for _, ms, _ in samples]
        r.g2g_latency_ms = _percentile(values, 50)
        r.g2g_latency_p95_ms = _percentile(values, 95)
        if r.g2g_latency_ms is not None:
            r.g2g_latency_ms = round(r.g2g_latency_ms, 3)
            r.g2g_latency_p95_ms = round(r.g2g_latency_p95_ms or 0.0, 3)

    def _per_second(self) -> None:
        r = self.r
        seconds = max(1, math.ceil(r.duration_s))
        frames = [0] * seconds
        for a in self.arrivals:
            i = int(a - self.t0)
            if 0 <= i < seconds:
                frames[i] += 1
        sent = [0] * seconds
        for s in self.track.sent:
            i = int(s - self.t0)
            if 0 <= i < seconds:
                sent[i] += 1
        lat: list[list[float]] = [[] for _ in range(seconds)]
        for t, ms, _ in r.latency_samples:
            if 0 <= int(t) < seconds:
                lat[int(t)].append(ms)
        r.per_second = [{"t_s": i, "fps_out": frames[i], "fps_in": sent[i],
                         "latency_ms_p50": _percentile(lat[i], 50)} for i in range(seconds)]

    def classify(self) -> None:
        r, spec = self.r, self.spec
        if r.outcome != "ok":
            return
        if any(e[1] == EVENT_PREFIX + "black_output" for e in r.events):
            r.reasons.append("black_output")
        end = self.t_end if self.t_end is not None else time.monotonic()
        if self.arrivals and end - self.arrivals[-1] > self.opt.stall_fail_s:
            r.outcome, r.error_phase, r.error_class = "failed", "pipeline", "output_stalled"
            r.error_detail = f"no output for the last {end - self.arrivals[-1]:.1f} s"
            return
        if r.startup_s is not None and r.startup_s > spec.max_startup_s:
            r.reasons.append("slow_startup")
        if r.output_fps is not None and r.output_fps < spec.min_output_fps:
            r.reasons.append("low_fps")
        if r.jitter_coeff is not None and r.jitter_coeff > spec.max_jitter_coeff:
            r.reasons.append("jitter")
        if r.freeze_s > spec.max_freeze_s:
            r.reasons.append("freezes")
        if r.g2g_latency_ms is not None and r.g2g_latency_ms > spec.max_g2g_latency_ms:
            r.reasons.append("high_latency")
        if r.reasons:
            r.outcome = "degraded"


async def run_probe(spec: ProbeSpec, stop: asyncio.Event | None = None,
                    client: httpx.AsyncClient | None = None) -> ProbeResult:
    """Run one session to its end and return what was measured; never raises for gateway behaviour.

    Setting ``stop`` ends the session early (outcome failed, phase tester, error ``stopped``) with a
    full teardown; cancelling the task tears down too, then re-raises. Sessions of one process
    should share ``client`` (making one loads the CA bundle: ~20 ms of CPU).
    """
    if client is None:
        async with new_http_client(spec.options) as own:
            return await run_probe(spec, stop, own)
    probe = _Probe(spec, stop)
    r = probe.r
    try:
        await asyncio.wait_for(probe.run(client), spec.max_s + CAP_GRACE_S)
    except ProbeFailure as f:
        probe.t_end = time.monotonic()
        r.outcome = "skipped_no_capacity" if f.skipped else "failed"
        r.error_phase, r.error_class, r.error_detail, r.excused = f.phase, f.error, f.detail or None, f.excused
        if probe.t_answer is not None and f.phase != "tester":
            await _blame(probe, client)
    except asyncio.TimeoutError:
        r.outcome, r.error_phase, r.error_class = "failed", "timeout", "session_cap"
        r.error_detail = f"the session ran into its {spec.max_s:g} s cap"
    except asyncio.CancelledError:
        r.outcome, r.error_phase, r.error_class = "failed", "tester", "cancelled"
        await probe.rtcp()
        await probe.teardown(client)
        probe.finish()
        raise
    except Exception as exc:  # noqa: BLE001 - a tester bug must still end in a result and a teardown
        r.outcome, r.error_phase, r.error_class = "failed", "tester", type(exc).__name__
        r.error_detail = str(exc)[:200]
    if r.outcome == "ok":
        await probe.rtcp()
    await probe.teardown(client)
    probe.finish()
    probe.classify()
    if r.outcome != "ok" and r.error_class:
        probe.event("session_error", phase=r.error_phase, error=r.error_class, excused=r.excused)
    return r


async def _blame(probe: _Probe, client: httpx.AsyncClient) -> None:
    """After the 201 the gateway reports failures in its status only: let its error decide the outcome."""
    r = probe.r
    message = await probe.diagnose(client)
    if not message:
        return
    verdict = classify_gateway_error(message)
    r.outcome, r.error_phase, r.error_class, r.excused = verdict.outcome, verdict.phase, verdict.error, verdict.excused
    r.error_detail = message[:200]
