"""The reference gateway's Daydream and BYOC facades.

**Daydream** follows the Daydream SDK's OpenAPI (daydreamlive/daydream-typescript
``.speakeasy/out.openapi.yaml``): ``POST /v1/streams`` with ``pipeline:
"streamdiffusion"`` and ``params`` whose ``model_id`` is required and whose
unknown keys are refused; ``PATCH /v1/streams/{id}`` with both ``pipeline``
and ``params``; ``GET /v1/streams/{id}/status`` answering ``{success, error,
data}``; ``DELETE /v1/streams?id=…``. The created stream's ``whip_url`` is the
gateway's WHIP endpoint for its stream key (the auth webhook's part in the
real system: it maps the key to the stream's pipeline, params and id).

**BYOC** follows go-livepeer ``byoc/stream_gateway.go`` and ``byoc/types.go``:
``POST /process/stream/start`` with a ``Livepeer`` header (base64 JSON whose
``request`` and ``parameters`` are JSON strings and ``timeout_seconds`` is
non-zero) and a JSON body ``{stream_name, rtmp_output, stream_id, params}``
(``params`` a JSON string); the answer names the stream's URLs, with empty
WHIP / WHEP URLs unless ``enable_video_ingress`` / ``enable_video_egress``.
No orchestrator for the capability: 400 "No orchestrators found for
capability …" (``byoc/job_gateway.go``); a ``stream_name`` the auth webhook refuses: 403 "live ai auth
failed: …" (``setupStream``). The status is go-livepeer's one flat map per stream (``whep_url``,
``orchestrator``, ``ingest_metrics``, ``error`` at the top level), readable from the start and replaced
whole by each runner report (``byoc/trickle.go``). go-livepeer serves no BYOC WHEP ("TODO: add WHEP
support", ``byoc/byoc.go``): its ``whep_url`` names ``LIVE_AI_WHEP_URL`` (mediamtx, fed by the RTMP
output); here that URL is the gateway's own WHEP handler unless ``whep_base_url`` says otherwise.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
from typing import Any, Protocol

from aiohttp import web

from fleet.gateway.auth import AUTH_FAILED, refuses
from fleet.gateway.config import GatewayConfig
from fleet.gateway.network import Network
from fleet.gateway.stream import Stream


class FacadeHost(Protocol):
    """What a facade needs of the gateway that serves it (``ReferenceGateway`` in server.py): its settings,
    address and network, its streams, and go-livepeer's own stream opening behind the facade."""

    config: GatewayConfig
    network: Network
    port: int | None
    live: dict[str, Stream]
    status_store: dict[str, Stream]

    @property
    def url(self) -> str: ...

    def whep_url(self, name: str, request_id: str) -> str: ...

    async def open_stream(self, request: web.Request, name: str, pipeline: str, params: dict[str, Any],
                          stream_id: str, orchestrator: str = "", include_uris: tuple[str, ...] = (),
                          exclude_uris: tuple[str, ...] = (), request_id: str | None = None,
                          flat_status: dict[str, Any] | None = None) -> web.Response: ...

__all__ = ["Byoc", "DAYDREAM_PARAMS", "Daydream", "FacadeHost"]

DAYDREAM_PIPELINE = "streamdiffusion"
# the keys of the SDK's StreamDiffusion params schemas (additionalProperties: false)
DAYDREAM_PARAMS = frozenset({
    "model_id", "prompt", "prompt_interpolation_method", "normalize_prompt_weights", "normalize_seed_weights",
    "negative_prompt", "guidance_scale", "delta", "num_inference_steps", "t_index_list", "use_safety_checker",
    "width", "height", "lora_dict", "use_lcm_lora", "lcm_lora_id", "acceleration", "use_denoising_batch",
    "do_add_noise", "seed", "seed_interpolation_method", "enable_similar_image_filter",
    "similar_image_filter_threshold", "similar_image_filter_max_skip_frame", "skip_diffusion",
    "image_preprocessing", "image_postprocessing", "latent_preprocessing", "latent_postprocessing", "controlnets",
    "ip_adapter", "ip_adapter_style_image_url", "cached_attention",
})
DAYDREAM_CREATE_KEYS = frozenset({"pipeline", "params", "name", "output_rtmp_url", "is_smoke_test"})


def _dd_error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status)


def _daydream_params(body: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(params, None) for a valid ``{pipeline, params}`` body, else (None, why)."""
    if not isinstance(body, dict):
        return None, "expected a JSON object"
    if body.get("pipeline") != DAYDREAM_PIPELINE:
        return None, f"pipeline must be {DAYDREAM_PIPELINE!r}"
    params = body.get("params")
    if not isinstance(params, dict):
        return None, "params must be an object"
    if not isinstance(params.get("model_id"), str):
        return None, "params.model_id is required"
    unknown = sorted(set(params) - DAYDREAM_PARAMS)
    if unknown:
        return None, f"params has unknown keys: {', '.join(unknown)}"
    return params, None


class Daydream:
    def __init__(self, gateway: FacadeHost) -> None:
        self.gw = gateway
        self.created: dict[str, dict[str, Any]] = {}   # by stream id
        self.by_key: dict[str, str] = {}                # stream key -> stream id

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/streams", self.create), web.get("/v1/streams/{id}", self.get),
                web.get("/v1/streams/{id}/status", self.status), web.patch("/v1/streams/{id}", self.patch),
                web.delete("/v1/streams", self.delete)]

    def _authorised(self, request: web.Request) -> bool:
        token = self.gw.config.token
        return token is None or request.headers.get("Authorization") == f"Bearer {token}"

    async def create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _dd_error(401, "missing or wrong Bearer token")
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            return _dd_error(400, f"body is not JSON: {exc.msg}")
        params, why = _daydream_params(body)
        if params is None:
            return _dd_error(400, why or "bad request")
        unknown = sorted(set(body) - DAYDREAM_CREATE_KEYS)
        if unknown:
            return _dd_error(400, f"unknown keys: {', '.join(unknown)}")
        sid, key = secrets.token_hex(8), secrets.token_hex(8)
        stream = {"id": sid, "pipeline": DAYDREAM_PIPELINE, "params": params, "stream_key": key,
                  "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), "output_playback_id": secrets.token_hex(8),
                  "name": str(body.get("name") or sid), "author": "reference", "from_playground": False,
                  "gateway_host": f"{self.gw.config.host}:{self.gw.port}",
                  "is_smoke_test": bool(body.get("is_smoke_test", False)),
                  "whip_url": f"{self.gw.url}/live/video-to-video/{key}/whip"}
        self.created[sid] = stream
        self.by_key[key] = sid
        return web.json_response(stream, status=201)

    def preset(self, stream_key: str) -> dict[str, Any] | None:
        """What the auth webhook answers for a WHIP to this stream key: the created stream's pipeline, params, id."""
        sid = self.by_key.get(stream_key)
        return self.created.get(sid or "")

    def _live(self, sid: str) -> Any:
        stream = self.created.get(sid)
        return None if stream is None else self.gw.live.get(stream["stream_key"])

    async def get(self, request: web.Request) -> web.Response:
        sid, refused = self._known(request)
        return refused if refused is not None else web.json_response(self.created[sid])

    def _known(self, request: web.Request) -> tuple[str, web.Response | None]:
        """The stream id of the path, or the error answer (401 without the token, 404 for an unknown id)."""
        sid = request.match_info["id"]
        if not self._authorised(request):
            return sid, _dd_error(401, "missing or wrong Bearer token")
        return sid, None if sid in self.created else _dd_error(404, "stream not found")

    async def status(self, request: web.Request) -> web.Response:
        sid, refused = self._known(request)
        if refused is not None:
            return refused
        stream = self.gw.status_store.get(sid)
        data = stream.reports.status() if stream is not None else {}
        return web.json_response({"success": True, "error": None, "data": {"stream_id": sid, **data}})

    async def patch(self, request: web.Request) -> web.Response:
        sid, refused = self._known(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            return _dd_error(400, f"body is not JSON: {exc.msg}")
        params, why = _daydream_params(body)  # the SDK's update needs both pipeline and params
        if params is None:
            return _dd_error(400, why or "bad request")
        self.created[sid]["params"] = params
        live = self._live(sid)
        if live is not None:
            live.set_params(params)
        return web.json_response(self.created[sid])

    async def delete(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _dd_error(401, "missing or wrong Bearer token")
        sid = request.query.get("id", "")
        if sid not in self.created:
            return _dd_error(404, "stream not found")
        live = self._live(sid)
        if live is not None:
            await live.close("Daydream DELETE")
        stream = self.created.pop(sid)
        self.by_key.pop(stream["stream_key"], None)
        return web.json_response({"success": True, "data": {}})


def _json_string(job: dict[str, Any], key: str) -> dict[str, Any]:
    value = job.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a JSON string")
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(f"{key} must encode a JSON object")
    return parsed


def _job(header: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(job, parameters) from the ``Livepeer`` header; ValueError says what is wrong."""
    try:
        job = json.loads(base64.b64decode(header, validate=True)) if header else None
    except (binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the Livepeer header must be base64 of a JSON job request") from None
    if not isinstance(job, dict):
        raise ValueError("the Livepeer header must encode a JSON object")
    if not job.get("timeout_seconds"):
        raise ValueError("timeout_seconds must be set")
    try:
        _json_string(job, "request")
        parameters = _json_string(job, "parameters")
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"Unable to unmarshal job request err={exc}") from None
    return job, parameters


class Byoc:
    def __init__(self, gateway: FacadeHost) -> None:
        self.gw = gateway
        self.created: dict[str, dict[str, Any]] = {}  # by stream id

    def routes(self) -> list[web.RouteDef]:
        base = "/process/stream/{id}/"
        return [web.post("/process/stream/start", self.start), web.post(base + "whip", self.whip),
                web.post(base + "update", self.update), web.get(base + "status", self.status),
                web.post(base + "stop", self.stop)]

    async def start(self, request: web.Request) -> web.Response:
        try:
            job, parameters = _job(request.headers.get("Livepeer", ""))
        except ValueError as exc:
            return web.Response(status=400, text=f"Unable to parse job request, err={exc}\n")
        capability = str(job.get("capability", ""))
        orchs = parameters.get("orchestrators") or {}
        include, exclude = tuple(orchs.get("include") or ()), tuple(orchs.get("exclude") or ())
        if not self.gw.network.has_room(capability, include, exclude):
            return web.Response(status=400, text=f"No orchestrators found for capability {capability}\n")
        try:
            body = json.loads(await request.read())
            params = json.loads(body["params"]) if body.get("params") else {}
        except (json.JSONDecodeError, TypeError, AttributeError, KeyError):
            return web.Response(status=400, text="invalid JSON request body\n")
        if not isinstance(params, dict):
            return web.Response(status=400, text="invalid model params\n")
        if refuses(self.gw.config.refused_streams, str(body.get("stream_name") or "")):
            return web.Response(status=403, text=AUTH_FAILED + "\n")
        sid = str(body.get("stream_id") or secrets.token_hex(8))
        if body.get("stream_name"):
            sid = f"{body['stream_name']}-{sid}"
        if sid in self.created and self.gw.live.get(sid) is not None:
            return web.Response(status=400, text=f"stream already exists: {sid}\n")
        base = f"{self.gw.url}/process/stream/{sid}/"
        request_id = secrets.token_hex(4)
        whep_url = self.gw.whep_url(sid, request_id) if parameters.get("enable_video_egress") else ""
        self.created[sid] = {"capability": capability, "params": params, "include": include, "exclude": exclude,
                             "request_id": request_id, "status": {"whep_url": whep_url}}  # StoreKey at the start
        return web.json_response({
            "stream_id": sid, "whip_url": base + "whip" if parameters.get("enable_video_ingress") else "",
            "whep_url": whep_url, "rtmp_url": "", "rtmp_output_url": "", "update_url": base + "update", "status_url": base + "status",
            "data_url": "", "stop_url": base + "stop"})

    async def whip(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        job = self.created.get(sid)
        if job is None:
            return web.Response(status=404, text=f"stream not found: {sid}\n")
        return await self.gw.open_stream(request, sid, job["capability"], job["params"], sid,
                                         include_uris=job["include"], exclude_uris=job["exclude"],
                                         request_id=job["request_id"], flat_status=job["status"])

    async def update(self, request: web.Request) -> web.Response:
        try:
            _job(request.headers.get("Livepeer", ""))
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        live = self.gw.live.get(request.match_info["id"])
        if live is None:
            return web.Response(status=404, text="Stream not found\n")
        try:
            params = json.loads(await request.read())
        except json.JSONDecodeError:
            return web.Response(status=400, text="invalid JSON request body\n")
        if not isinstance(params, dict):
            return web.Response(status=400, text="invalid model params\n")
        live.set_params(params)
        return web.Response(status=200)

    async def status(self, request: web.Request) -> web.Response:
        """The flat status map: the stream's once it has one, before that what the start stored."""
        sid = request.match_info["id"]
        stream = self.gw.status_store.get(sid)
        flat = stream.reports.byoc_status() if stream is not None else (self.created.get(sid) or {}).get("status")
        if flat is None:
            return web.Response(status=404, text="Stream not found\n")
        return web.json_response(flat)

    async def stop(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        live = self.gw.live.get(sid)
        if sid not in self.created:
            return web.Response(status=404, text="Stream not found\n")
        if live is not None:
            await live.close("BYOC stop")
        del self.created[sid]
        return web.Response(status=200)
