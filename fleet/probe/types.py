"""What a probe session is given and what it returns: the spec, the options, the result row.

Plain data, no behaviour beyond the HTTP client the sessions of a process share: the runner builds
``ProbeSpec`` from a plan, ``fleet.probe.session.run_probe`` fills a ``ProbeResult``, and
``fleet.results.schema`` stores it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import httpx

from fleet.errors import AnyErrorClass, Outcome, Phase
from fleet.media import Clip
from fleet.webrtc import IceServer

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
PHASES: tuple[Phase, ...] = get_args(Phase)
EVENT_PREFIX = "fleet_"       # client-side events; the network's stream_trace names are the gateway's own


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
    check_every_s: float = 5.0                   # one frame decoded this often (black output?): the next keyframe,
                                                 # or a frame another decode window decodes
    decode: Literal["windows", "all"] = "windows"
    stall_fail_s: float = 5.0                    # output silent this long at the end: failed
    max_latency_s: float = 20.0
    bandwidth_feedback: bool = False             # send REMB like a browser (costs ~10 % of a session's CPU)
    black_window_s: float = 0.5                  # a decoded black frame keeps decoding on this long (a run?)
    teardown_timeout_s: float = 5.0
    verify_tls: bool = True
    ice_servers: tuple[IceServer, ...] = ()      # the scenario's STUN/TURN servers (credentials resolved)
    use_gateway_ice_servers: bool = True         # also those a gateway named in WHIP Link headers (RFC 9725)
    keep_timeline: bool = False                  # keep every output frame's (RTP ts, arrival) in the result
    calibrate_max_s: float = 15.0                # decode every frame at most this long looking for the latency
    send_phases: int = 4                         # the process's sessions send their frames at this many instants a
                                                 # frame period (fleet.media.PacketTrack); 0 (or less): each at its own


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
    outcome: Outcome = "ok"
    error_class: AnyErrorClass | None = None
    error_phase: Phase | None = None
    error_detail: str | None = None
    excused: bool = False              # a failure NaaP does not count against the orchestrator
    gateway_error: str | None = None   # gateway_status.error.error_message, as the gateway said it
    startup_outcome: str | None = None  # NaaP RULE-LIFECYCLE-003: success, excused, unexcused (None: not known)
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
    jitter_suspect_intervals: int = 0    # left out: an end in the tester's own stall (its loop's, its late sends)
    tester_stall_frames: int = 0         # output frames in the tester's own stalls (its loop's, its late sends)
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
    tester_send_jitter_coeff: float | None = None  # the jitter of the frames as sent (jitter_coeff's definition)
    keyframes_on_request: int = 0   # keyframe requests (PLI) from the gateway answered by jumping to a keyframe
    # the selected ICE candidate pair's types (host, srflx, prflx, relay): ingest (WHIP) and egress (WHEP)
    ice_local_candidate: str | None = None
    ice_remote_candidate: str | None = None
    egress_ice_local_candidate: str | None = None
    egress_ice_remote_candidate: str | None = None
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
    swapped: bool = False                # an orchestrator swap happened (NaaP: orchestrator_swap); never a failure
    swap_count: int = 0
    swap_gap_s: float | None = None      # seconds the viewer's output was gone over the swaps it saw
    orchestrators: list[str] = field(default_factory=list)  # every orchestrator that served it, in order
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
