"""The reference gateway's HTTP server: go-livepeer, Daydream and BYOC dialects, truth endpoints.

``ReferenceGateway`` runs in-process (``await start()`` / ``await stop()``);
``GatewayProcess`` runs ``fleet gateway serve`` as a subprocess and waits for
its readiness line. Routes (go-livepeer dialect as in shared/LIVEPEER.md):

    POST   /live/video-to-video/{stream}/whip          WHIP ingest (application/sdp)
    DELETE /live/video-to-video/{stream}/whip/{id}     stop (RFC 9725)
    POST   /live/video-to-video/{stream}/whep          WHEP egress (the Livepeer-Playback-URL)
    POST   /live/video-to-video/{stream}/update        params update (JSON, <= max_body_bytes)
    GET    /live/video-to-video/{stream}/status        ai_stream_status-shaped status
    GET    /getNetworkCapabilities                      orchestrators, slots, GPUs
    POST/GET/PATCH/DELETE /v1/streams[/{id}]            Daydream facade (Bearer token)
    POST   /process/stream/start, /process/stream/{id}/stop   BYOC facade
    GET    /debug/streams, /debug/streams/{id}          ground truth
    POST   /debug/capacity                              other users take / give back slots (JSON)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet.gateway.config import GatewayConfig, default_config
from fleet.gateway.network import Network
from fleet.gateway.stream import Stream

__all__ = ["GatewayProcess", "ReferenceGateway", "READY_PREFIX"]

log = logging.getLogger(__name__)

READY_PREFIX = "fleet gateway listening on "
SHUTDOWN_TIMEOUT_S = 10.0
MAX_CLOSED_STREAMS = 1000  # closed streams whose truth is kept; older ones are forgotten
NO_ORCHESTRATORS = "gateway_no_orchestrators_available"
_SDP_TYPES = ("application/sdp",)


_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, Livepeer",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Livepeer-Playback-URL, X-Stream-Id",
}


@web.middleware
async def _cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Browser WHIP/WHEP clients: answer preflights, expose the WHIP headers."""
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**_CORS, "Accept-Post": "application/sdp"})
    response = await handler(request)
    response.headers.update(_CORS)
    return response


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class ReferenceGateway:
    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = config or default_config()
        self.network = Network(self.config)
        self.live: dict[str, Stream] = {}       # by stream name
        self.history: dict[str, Stream] = {}    # by stream id, every stream ever started
        self.pending: dict[str, dict[str, Any]] = {}  # Daydream / BYOC streams created, not yet ingesting
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def whep_url(self, name: str) -> str:
        return f"{self.url}/live/video-to-video/{name}/whep"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[_cors])
        base = "/live/video-to-video/{stream}"
        app.add_routes([
            web.post(base + "/whip", self.whip), web.delete(base + "/whip/{id}", self.delete),
            web.post(base + "/whep", self.whep), web.post(base + "/update", self.update),
            web.get(base + "/status", self.status),
            web.get("/getNetworkCapabilities", self.capabilities),
            web.get("/debug/streams", self.debug_list), web.get("/debug/streams/{id}", self.debug_stream),
            web.post("/debug/capacity", self.debug_capacity),
            web.post("/v1/streams", self.dd_create), web.get("/v1/streams/{id}", self.dd_get),
            web.patch("/v1/streams/{id}", self.dd_patch), web.delete("/v1/streams/{id}", self.dd_delete),
            web.post("/process/stream/start", self.byoc_start), web.post("/process/stream/{id}/stop", self.byoc_stop),
            web.options("/{tail:.*}", self.preflight),
        ])
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port

    async def stop(self) -> None:
        """Close every stream's peer connections, then the server."""
        await asyncio.wait_for(asyncio.gather(*(s.close("gateway shutdown") for s in list(self.live.values())),
                                              return_exceptions=True), SHUTDOWN_TIMEOUT_S)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- network bookkeeping ------------------------------------------------------

    def _forget_old(self) -> None:
        """Keep the truth of every open stream and of the last MAX_CLOSED_STREAMS closed ones."""
        closed = [sid for sid, s in self.history.items() if s.closed]
        for sid in closed[: max(0, len(closed) - MAX_CLOSED_STREAMS)]:
            del self.history[sid]

    def released(self, stream: Stream) -> None:
        self.network.release(stream.lease)
        if self.live.get(stream.name) is stream:
            del self.live[stream.name]

    def swap(self, stream: Stream) -> None:
        """Move ``stream`` to another orchestrator (a fault), as a gateway does when one fails."""
        new = self.network.acquire(stream.pipeline, exclude=stream.lease.orchestrator.address)
        if new is None:
            stream.event("orchestrator_swap_failed", reason="no other orchestrator has room")
            return
        old = stream.lease
        self.network.release(old)
        stream.lease = new
        stream.restart_count += 1
        stream.event("orchestrator_swap", old=old.orchestrator.address, new=new.orchestrator.address)

    async def open_stream(self, name: str, offer: str, pipeline: str, params: dict[str, Any],
                          stream_id: str | None, orchestrator: str) -> web.Response:
        if name in self.live:
            return _error(409, f"stream {name!r} is already live")
        if len(self.live) >= self.config.max_streams:
            return _error(503, f"the gateway is at its limit of {self.config.max_streams} streams")
        lease = self.network.acquire(pipeline, orchestrator)
        if lease is None:
            return _error(503, "no orchestrators available", trace=NO_ORCHESTRATORS, pipeline=pipeline)
        faults = self.network.faults_for(lease.orchestrator.address, lease.orchestrator.uri)
        kinds = {f.kind: f for f in faults}
        stream = Stream(self, stream_id or uuid.uuid4().hex, name, pipeline, params, lease, faults)
        self.live[name] = stream
        self.history[stream.id] = stream
        self._forget_old()
        if "signaling_error" in kinds:
            await stream.close("fault: signaling_error")
            return _error(kinds["signaling_error"].status, "orchestrator signaling failed (injected fault)")
        if "signaling_timeout" in kinds or "slow_answer" in kinds:
            await asyncio.sleep((kinds.get("signaling_timeout") or kinds["slow_answer"]).delay_s)
            if "signaling_timeout" in kinds:
                await stream.close("fault: signaling_timeout")
                return _error(504, "orchestrator did not answer (injected fault)")
        try:
            answer = await stream.answer_whip(offer)
        except ValueError as exc:  # aiortc: a malformed or unusable offer
            await stream.close(f"bad offer: {exc}")
            return _error(400, f"cannot use the SDP offer: {exc}")
        if "ice_never" in kinds:
            answer = re.sub(r"a=candidate:[^\r\n]*\r?\n", "", answer)
            answer = re.sub(r"(c=IN IP4 )\S+", r"\g<1>192.0.2.255", answer)
        location = f"/live/video-to-video/{name}/whip/{stream.id}"
        return web.Response(status=201, text=answer, content_type="application/sdp", headers={
            "Location": location, "ETag": f'"{stream.id}"', "Livepeer-Playback-URL": self.whep_url(name),
            "X-Stream-Id": stream.id})

    # --- go-livepeer dialect -----------------------------------------------------

    async def preflight(self, request: web.Request) -> web.Response:  # answered by the CORS middleware
        return web.Response(status=204)

    async def whip(self, request: web.Request) -> web.Response:
        if request.content_type not in _SDP_TYPES:
            return _error(415, f"Content-Type must be application/sdp, got {request.content_type or 'none'}")
        name = request.match_info["stream"]
        q = request.query
        preset = self.pending.pop(name, {})
        try:
            params = json.loads(q["params"]) if "params" in q else preset.get("params", {})
        except json.JSONDecodeError as exc:
            return _error(400, f"params is not JSON: {exc.msg}")
        if not isinstance(params, dict):
            return _error(400, "params must be a JSON object")
        pipeline = q.get("pipeline") or preset.get("pipeline") or "streamdiffusion"
        offer = await request.text()
        if not offer.startswith("v=0") or "m=video" not in offer:
            return _error(400, "the body must be an SDP offer with a video m-line")
        return await self.open_stream(name, offer, pipeline, params, q.get("streamId") or preset.get("id"),
                                      q.get("orchestrator", ""))

    def _live(self, request: web.Request) -> Stream | None:
        return self.live.get(request.match_info["stream"])

    async def delete(self, request: web.Request) -> web.Response:
        stream = self._live(request)
        if stream is None or stream.id != request.match_info["id"]:
            return _error(404, "no such live stream")
        await stream.close("DELETE")
        return web.Response(status=200)

    async def whep(self, request: web.Request) -> web.Response:
        if request.content_type not in _SDP_TYPES:
            return _error(415, "Content-Type must be application/sdp")
        stream = self._live(request)
        if stream is None:
            return _error(404, "no such live stream")
        answer = await stream.answer_whep(await request.text())
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": request.path + f"/{len(stream.whep)}"})

    async def update(self, request: web.Request) -> web.Response:
        stream = self._live(request)
        if stream is None:
            return _error(404, "no such live stream")
        try:
            params = json.loads(await request.read())
        except json.JSONDecodeError as exc:
            return _error(400, f"body is not JSON: {exc.msg}")
        if not isinstance(params, dict):
            return _error(400, "params must be a JSON object")
        stream.set_params(params)
        return web.Response(status=200)

    async def status(self, request: web.Request) -> web.Response:
        stream = self._live(request)
        if stream is None:
            return _error(404, "no such live stream")
        return web.json_response(stream.status())

    async def capabilities(self, request: web.Request) -> web.Response:
        return web.json_response(self.network.capabilities())

    # --- truth -----------------------------------------------------------------

    async def debug_list(self, request: web.Request) -> web.Response:
        streams = [s.summary() for s in self.history.values()]
        return web.json_response({"open": sum(1 for s in streams if s["open"]), "streams": streams})

    async def debug_stream(self, request: web.Request) -> web.Response:
        stream = self.history.get(request.match_info["id"])
        if stream is None:
            return _error(404, "no such stream")
        return web.json_response(stream.truth())

    async def debug_capacity(self, request: web.Request) -> web.Response:
        """``{"orchestrator": "<substring>", "take": N}`` (or ``"give": N``): outside users take slots.

        The slots leave the idle count of every matching orchestrator; streams already running
        there go on. Tests use it to shrink the network's idle capacity while a campaign runs.
        """
        try:
            body = await request.json()
            match = str(body.get("orchestrator", ""))
            take, give = int(body.get("take", 0)), int(body.get("give", 0))
        except (ValueError, TypeError, AttributeError):
            return _error(400, 'expected {"orchestrator": "<substring>", "take": N} or "give": N')
        if take < 0 or give < 0:
            return _error(400, "take and give are slot counts (>= 0)")
        hit = [o.address for o in self.config.orchestrators if match in o.address or match in o.uri]
        for address in hit:
            self.network.drop_capacity(address, take)
            self.network.restore_capacity(address, give)
        return web.json_response({"orchestrators": hit, **self.network.capabilities()})

    # --- Daydream facade ---------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        token = self.config.token
        return token is None or request.headers.get("Authorization") == f"Bearer {token}"

    async def dd_create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong Bearer token")
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            return _error(400, f"body is not JSON: {exc.msg}")
        if not isinstance(body, dict) or not isinstance(body.get("params", {}), dict):
            return _error(400, "expected {\"pipeline\": ..., \"params\": {...}}")
        sid = uuid.uuid4().hex
        self.pending[sid] = {"id": sid, "pipeline": body.get("pipeline", "streamdiffusion"),
                             "params": body.get("params", {})}
        return web.json_response({"id": sid, "whip_url": f"{self.url}/live/video-to-video/{sid}/whip",
                                  "output_playback_id": sid, "whep_url": self.whep_url(sid),
                                  "pipeline": self.pending[sid]["pipeline"]}, status=201)

    def _dd_stream(self, request: web.Request) -> Stream | None:
        return self.live.get(request.match_info["id"])

    async def dd_get(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong Bearer token")
        stream = self._dd_stream(request)
        if stream is None:
            pending = self.pending.get(request.match_info["id"])
            return web.json_response({**pending, "state": "INITIALIZING"}) if pending else _error(404, "no such stream")
        return web.json_response({"id": stream.name, **stream.status()})

    async def dd_patch(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong Bearer token")
        stream = self._dd_stream(request)
        body = await request.json()
        params = body.get("params", body) if isinstance(body, dict) else None
        if not isinstance(params, dict):
            return _error(400, "params must be a JSON object")
        if stream is None:
            pending = self.pending.get(request.match_info["id"])
            if pending is None:
                return _error(404, "no such stream")
            pending["params"] = {**pending["params"], **params}
            return web.json_response(pending)
        stream.set_params({**stream.params, **params})
        return web.json_response({"id": stream.name, "params": stream.params})

    async def dd_delete(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "missing or wrong Bearer token")
        return await self._stop_created(request.match_info["id"], "DELETE /v1/streams", 204)

    async def _stop_created(self, sid: str, reason: str, ok_status: int) -> web.Response:
        """Stop a stream made through a facade, live or not yet ingesting."""
        stream = self.live.get(sid)
        if stream is not None:
            await stream.close(reason)
        elif self.pending.pop(sid, None) is None:
            return _error(404, "no such stream")
        return web.Response(status=ok_status)

    # --- BYOC facade -----------------------------------------------------------------

    async def byoc_start(self, request: web.Request) -> web.Response:
        header = request.headers.get("Livepeer", "")
        try:
            job = json.loads(base64.b64decode(header, validate=True)) if header else {}
        except (binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the Livepeer header must be base64 of a JSON job request")
        if not isinstance(job, dict):
            return _error(400, "the Livepeer header must encode a JSON object")
        sid = uuid.uuid4().hex
        params = job.get("parameters") or job.get("params") or {}
        self.pending[sid] = {"id": sid, "pipeline": job.get("capability", "streamdiffusion"),
                             "params": params if isinstance(params, dict) else {}}
        base = f"{self.url}/live/video-to-video/{sid}"
        return web.json_response({"stream_id": sid, "whip_url": base + "/whip", "whep_url": base + "/whep",
                                  "update_url": base + "/update", "status_url": base + "/status",
                                  "stop_url": f"{self.url}/process/stream/{sid}/stop"}, status=200)

    async def byoc_stop(self, request: web.Request) -> web.Response:
        return await self._stop_created(request.match_info["id"], "BYOC stop", 200)

async def serve(config: GatewayConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT / SIGTERM, then shut down cleanly (every peer connection closed)."""
    gateway = ReferenceGateway(config)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_PREFIX}{gateway.url}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    await gateway.stop()


class GatewayProcess:
    """``fleet gateway serve`` in a subprocess; ``url`` once its readiness line is read."""

    def __init__(self, config_path: str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 start_timeout_s: float = 30.0, config: GatewayConfig | None = None) -> None:
        self.args = [sys.executable, "-m", "fleet", "gateway", "serve", "--host", host, "--port", str(port)]
        self._tmp: tempfile.TemporaryDirectory | None = None
        if config is not None:  # a config object: handed over as a JSON (hence YAML) file
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-gateway-")
            config_path = Path(self._tmp.name) / "gateway.json"
            config_path.write_text(config.model_dump_json())
        if config_path is not None:
            self.args += ["--config", str(config_path)]
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def __enter__(self) -> GatewayProcess:
        # stderr is inherited: an unread pipe would block a chatty gateway once it filled
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.start_timeout_s):
            self.stop()
            raise RuntimeError(f"the reference gateway did not start within {self.start_timeout_s:g} s")
        line = self.proc.stdout.readline()
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"the reference gateway failed to start (exit {self.proc.returncode}; "
                               f"its stderr says why): {line.strip()}")
        self.url = line[len(READY_PREFIX):].strip()
        return self

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(SHUTDOWN_TIMEOUT_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
