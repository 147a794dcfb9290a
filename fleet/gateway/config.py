"""Configuration of the reference gateway and the simulated network behind it.

A config names GPU performance profiles (output fps cap, processing delay
with jitter, cold start, warm-up), orchestrators with GPUs and slots per
model, and faults to inject. ``default_config()`` is the network that
``fleet gateway serve`` and ``reference`` scenarios use when given none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyAddress, model_validator

from fleet.capacity import LIVE_VIDEO_TO_VIDEO, CapacitySnapshot, parse_network_capabilities
from fleet.document import load_document
from fleet.errors import InputError
from fleet.spec import Spec, parse

__all__ = [
    "DEFAULT_MODEL", "Delay", "Fault", "GatewayConfig", "Gpu", "GpuProfile", "IceServerSpec", "OrchestratorSpec",
    "capabilities_body", "default_config", "load_gateway_config", "reference_capacity",
]

DEFAULT_MODEL = "streamdiffusion"

FaultKind = Literal[
    "signaling_error",   # the orchestrator refuses the job (after the 201): gateway error, peer connection closed
    "slow_answer",       # the orchestrator takes delay_s to start the job: a slow startup
    "signaling_timeout", # the orchestrator never starts the job: gateway error after delay_s, connection closed
    "ice_never",         # the SDP answer carries no usable candidate: ICE never completes (the gateway's own fault)
    "output_stall",      # input flows, output stops
    "disconnect",        # the gateway closes the peer connections mid-stream
    "black_frames",      # output frames turn black
    "fps_drop",          # output fps falls to a fraction
    "orchestrator_swap", # the stream moves to another orchestrator mid-stream
    "capacity_drop",     # the orchestrator's advertised capacity falls
    "malformed_status",  # a gateway bug: the status answers with objects of the wrong type
    "packet_loss",       # loss_pct of the media packets to each viewer are dropped
    "transient_error",   # an error the stream survives ("Missing next handle"): gateway_status.error, stream goes on
]


class Delay(Spec):
    """Per-frame processing delay: ``mean_ms`` plus jitter drawn from ``dist``."""

    dist: Literal["fixed", "normal", "uniform"] = "normal"
    mean_ms: Annotated[float, Field(ge=0, le=10_000)] = 80.0
    jitter_ms: Annotated[float, Field(ge=0, le=10_000)] = 4.0


class GpuProfile(Spec):
    name: str = Field(description="GPU model name, as in hardware[].gpu_info.name")
    fps_cap: Annotated[float, Field(gt=0, le=240)] = 30.0
    prompt_cost: Annotated[float, Field(ge=0, le=0.9)] = Field(
        0.2, description="Largest fraction of fps_cap a costly prompt takes away (cost grows with prompt length)")
    delay: Delay = Field(default_factory=Delay)
    cold_start_s: Annotated[float, Field(ge=0, le=120)] = 1.0
    warmup_frames: Annotated[int, Field(ge=0, le=10_000)] = 5


class Gpu(Spec):
    id: str
    profile: str
    slots: dict[str, Annotated[int, Field(ge=0, le=64)]] = Field(description="slots per model id")


class OrchestratorSpec(Spec):
    address: str
    uri: str
    region: str = "local"
    gpus: tuple[Gpu, ...] = Field(min_length=1)


class Fault(Spec):
    """A fault on the orchestrators whose address or URI contains ``orchestrator`` (all when empty).

    It applies to a stream with ``probability``, or to the streams numbered in ``streams``
    (the gateway counts streams per orchestrator from 1), starting ``after_s`` into the stream.
    """

    kind: FaultKind
    orchestrator: str = ""
    probability: Annotated[float, Field(ge=0, le=1)] = 0.0
    streams: tuple[Annotated[int, Field(ge=1)], ...] = ()
    after_s: Annotated[float, Field(ge=0)] = 0.0
    duration_s: Annotated[float, Field(gt=0)] | None = None
    status: Annotated[int, Field(ge=500, le=599)] = 503
    delay_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    fps_factor: Annotated[float, Field(gt=0, le=1)] = 0.5
    slots: Annotated[int, Field(ge=0)] = 0
    loss_pct: Annotated[float, Field(ge=0, le=50)] = 5.0

    @model_validator(mode="after")
    def _scheduled(self) -> Fault:
        if self.probability == 0 and not self.streams:
            raise ValueError("a fault needs 'probability' > 0 or a list of 'streams' it applies to")
        return self


class IceServerSpec(Spec):
    """A STUN/TURN server the gateway names in its WHIP ``Link`` headers (go-livepeer: WebrtcConfig)."""

    urls: str = Field(pattern=r"^(stun|stuns|turn|turns):")
    username: str | None = None
    credential: str | None = None


class GatewayConfig(Spec):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8937
    cli_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        5935, description="the CLI server's port on host, where /getNetworkCapabilities is served (go-livepeer "
                          "-cliAddr, default 127.0.0.1:5935; not the media port); 0 picks a free one")
    media_host: IPvAnyAddress | None = Field(
        None, description="the address WebRTC media (ICE host candidates) uses, apart from the HTTP address, as "
                          "go-livepeer's LIVE_AI_WHIP_ADDR / LIVE_AI_WHEP_ADDR; default: host (every interface if "
                          "host is unspecified)")
    max_streams: Annotated[int, Field(ge=1, le=10_000)] = 256
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    idle_timeout_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="the runner stops after this long without input (ai-runner)")
    selection_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0, description="orchestrator selection retries this long (go-livepeer aiProcessingRetryTimeout)")
    video_gather_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        5.0, description="no video track within this long closes the session (LIVE_AI_VIDEO_GATHER_TIMEOUT)")
    pli_interval_s: Annotated[float, Field(gt=0)] = Field(
        2.0, description="the gateway asks the publisher for a keyframe this often (go-livepeer keyframeInterval)")
    status_interval_s: Annotated[float, Field(gt=0)] = Field(
        10.0, description="the runner reports its status this often (ai-runner status_report_interval)")
    stats_interval_s: Annotated[float, Field(gt=0)] = Field(
        5.0, description="ingest_metrics in the status are refreshed this often (go-livepeer runStats)")
    status_retention_s: Annotated[float, Field(ge=0)] = Field(
        60.0, description="a stream's status stays readable this long after it ends (go-livepeer clearStreamDelay)")
    ice_failed_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        10.0, description="a peer that stops answering ICE checks fails after this long (go-livepeer iceFailedTimeout)")
    ingest_buffer_ms: Annotated[float, Field(ge=0, le=2000)] = Field(
        20.0, description="frames reach the runner on their media clock, this much after the first frame's "
                          "arrival (go-livepeer segments the ingest): arrival noise within it does not reach the "
                          "output")
    max_whep_viewers: Annotated[int, Field(ge=1, le=1000)] = Field(5, description="WHEP viewers per stream (429 past it)")
    output_gop_s: Annotated[float, Field(gt=0, le=10)] = Field(
        2.0, description="seconds between IDR frames of the processed output (ai-runner trickle/encoder.py GOP_SECS)")
    whep_base_url: str | None = Field(
        None, description="LIVE_AI_WHEP_URL: WHEP URLs are this + {stream}-{request}-out/whep; default: the gateway's "
                          "own /live/video-to-video/ handler")
    ice_servers: tuple[IceServerSpec, ...] = Field(
        (), description="STUN/TURN servers named in WHIP Link headers (go-livepeer names Google's STUN server; "
                        "none by default here, since tests stay on loopback)")
    relay: bool = Field(False, description="forward encoded frames untouched (benchmarks at high session counts)")
    video_codecs: tuple[Literal["H264", "VP8"], ...] = Field(
        ("H264",), min_length=1, description="video codecs a publisher may send; go-livepeer takes H.264 only "
                                             "(\"non-h264 video\"); VP8 is for relay-mode benchmarks of VP8 testers")
    token: str | None = Field(None, description="Bearer token the Daydream facade checks; None accepts any")
    refused_streams: tuple[str, ...] = Field(
        (), description="stream keys the auth webhook refuses (go-livepeer -liveAIAuthWebhookUrl), as shell patterns: "
                        "a WHIP to such a stream gets 201, then its peer connection is closed and no status is kept; "
                        "a BYOC start whose stream_name matches gets 403 \"live ai auth failed\"")
    seed: int = 0
    profiles: dict[str, GpuProfile]
    orchestrators: tuple[OrchestratorSpec, ...] = Field(min_length=1)
    faults: tuple[Fault, ...] = ()

    @model_validator(mode="after")
    def _profiles_known(self) -> GatewayConfig:
        for o in self.orchestrators:
            for g in o.gpus:
                if g.profile not in self.profiles:
                    raise ValueError(f"GPU {g.id} of {o.address} names profile {g.profile!r} "
                                     f"(allowed: {', '.join(self.profiles)})")
        return self


def default_config(**overrides: Any) -> GatewayConfig:
    """Four orchestrators with two GPUs each, two slots of ``streamdiffusion`` per GPU (16 slots)."""
    profiles = {
        "rtx4090": GpuProfile(name="NVIDIA GeForce RTX 4090", fps_cap=30.0, delay=Delay(mean_ms=60.0, jitter_ms=1.5)),
        "l40s": GpuProfile(name="NVIDIA L40S", fps_cap=24.0, delay=Delay(mean_ms=90.0, jitter_ms=4.0)),
    }
    orchestrators = []
    for i in range(4):
        profile = "rtx4090" if i % 2 == 0 else "l40s"
        orchestrators.append(OrchestratorSpec(
            address=f"0x{i + 1:040x}", uri=f"https://orch-{i + 1}.reference.local:8935",
            gpus=tuple(Gpu(id=f"GPU-{i + 1}-{g}", profile=profile, slots={DEFAULT_MODEL: 2}) for g in range(2))))
    fields = {"profiles": profiles, "orchestrators": tuple(orchestrators), **overrides}
    return GatewayConfig.model_validate(fields)


def load_gateway_config(path: str | Path) -> GatewayConfig:
    return parse(GatewayConfig, load_document(path, InputError), InputError)


def capabilities_body(config: GatewayConfig, busy: dict[tuple[str, str], int] | None = None,
                      dropped: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``/getNetworkCapabilities`` response for the network: idle and busy slots per model.

    ``busy`` maps (orchestrator address, model) to streams running there; ``dropped`` maps an
    address to slots removed by a capacity-drop fault. Zero fields are omitted, as go-livepeer does.
    """
    busy = busy or {}
    dropped = dropped or {}
    orchs = []
    for o in config.orchestrators:
        slots: dict[str, int] = {}
        for g in o.gpus:
            for model, n in g.slots.items():
                slots[model] = slots.get(model, 0) + n
        models = {}
        for model, n in slots.items():
            in_use = busy.get((o.address, model), 0)
            idle = max(0, n - in_use - dropped.get(o.address, 0))
            entry: dict[str, Any] = {"warm": True, "runnerVersion": "reference"}
            if idle:
                entry["capacity"] = idle
            if in_use:
                entry["capacityInUse"] = in_use
            models[model] = entry
        hardware = [{"pipeline": "live-video-to-video", "model_id": model,
                     "gpu_info": {str(k): {"id": g.id, "name": config.profiles[g.profile].name,
                                           "memory_free": 20 << 30, "memory_total": 24 << 30, "major": 8, "minor": 9}
                                  for k, g in enumerate(o.gpus) if model in g.slots}}
                    for model in slots]
        orchs.append({"address": o.address, "orch_uri": o.uri,
                      "capabilities": {"constraints": {"PerCapability": {LIVE_VIDEO_TO_VIDEO: {"models": models}}}},
                      "hardware": hardware})
    return {"orchestrators": orchs}


def reference_capacity(model: str, config: GatewayConfig | None = None) -> CapacitySnapshot:
    """The snapshot a fresh reference gateway would report for ``model``."""
    return parse_network_capabilities(capabilities_body(config or default_config()), model)
