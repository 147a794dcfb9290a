"""The reference gateway's HTTP server: go-livepeer's routes, the Daydream and BYOC facades, truth endpoints.

``ReferenceGateway`` runs in-process (``await start()`` / ``await stop()``;
``fleet.gateway.process.GatewayProcess`` runs it as a subprocess). Routes, as go-livepeer registers them
(server/ai_mediaserver.go ``startAIMediaServer``; docs/FIDELITY.md names the
source of every behaviour):

    POST   /live/video-to-video/{stream}/whip        WHIP ingest: 201 at once, selection after
    POST   /live/video-to-video/{path}/whep          WHEP egress, path {stream}-{requestID}-out
    POST   /live/video-to-video/{stream}/update      params update, keyed by stream name
    GET    /live/video-to-video/{streamId}/status    status, keyed by the WHIP streamId query parameter
    *      /live/video-to-video/{stream}/whip/{id}   405: go-livepeer has no DELETE (or PATCH) for WHIP
    GET    /getNetworkCapabilities                   on the CLI port (cli_port, go-livepeer -cliAddr): capacity
    /v1/streams...                                   Daydream facade (fleet.gateway.facades)
    /process/stream/...                              BYOC facade (fleet.gateway.facades)
    GET    /debug/streams, /debug/streams/{key}      ground truth (not part of go-livepeer)
    POST   /debug/capacity                           outside users take / give back slots
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import signal
from typing import Any

from aiohttp import web

from fleet.gateway.auth import answer_and_close, refuses
from fleet.gateway.config import GatewayConfig, default_config
from fleet.gateway.facades import Byoc, Daydream
from fleet.gateway.health import LoopLag, freeze_gc
from fleet.gateway.network import Network
from fleet.gateway.process import CLI_MARK, READY_PREFIX, SHUTDOWN_TIMEOUT_S
from fleet.gateway.runner import CONTROL_LOST
from fleet.gateway.stream import Stream
from fleet.webrtc import IceServer, ice_link_headers, set_ice_failed_timeout

__all__ = ["ReferenceGateway", "serve"]

log = logging.getLogger(__name__)

HANDLER_GRACE_S = 2.0       # on shutdown, a request still in its handler this long after the streams closed is cancelled
MAX_CLOSED_STREAMS = 1000  # closed streams whose truth is kept; older ones are forgotten
SDP = "application/sdp"

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, Livepeer",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Livepeer-Playback-URL",
}


@web.middleware
async def _cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Browser WHIP/WHEP clients: answer preflights, expose the WHIP headers."""
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**_CORS, "Accept-Post": SDP})
    try:
        response: web.StreamResponse = await handler(request)
    except ConnectionResetError:
        if request.transport is not None and not request.transport.is_closing():
            raise  # not this request's own connection
        # the client went away mid-request (its machine lost): no one to answer. The route, not the path: a
        # path names the stream key
        log.warning("%s %s: the client went away before its request was read", request.method,
                    request.match_info.route.resource.canonical if request.match_info.route.resource else "?")
        return web.Response(status=499)  # nginx's "client closed request"; never sent
    response.headers.update(_CORS)
    return response


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _text(status: int, message: str) -> web.Response:
    """An error as Go's http.Error writes it: plain text and a newline."""
    return web.Response(status=status, text=message + "\n")


def _created(request: web.Request, answer: str, playback: str, ice: tuple[IceServer, ...]) -> web.Response:
    """media/whip_server.go CreateWHIP's 201: the SDP answer, Location, a weak ETag, Link, the playback URL."""
    headers = {"Location": f"{request.url.with_query(None)}/{secrets.token_hex(8)}",
               "ETag": f'W/"{secrets.token_hex(8)}"', "Livepeer-Playback-URL": playback}
    response = web.Response(status=201, text=answer, content_type=SDP, headers=headers)
    for link in ice_link_headers(ice):
        response.headers.add("Link", link)
    return response


class ReferenceGateway:
    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = config or default_config()
        self.network = Network(self.config)
        self.live: dict[str, Stream] = {}            # by stream name
        self.status_store: dict[str, Stream] = {}     # by streamId, until status_retention_s after the end
        self.history: dict[str, Stream] = {}          # by stream key, every stream kept for the truth
        self.ice_servers = tuple(IceServer(s.urls, s.username, s.credential) for s in self.config.ice_servers)
        self.daydream = Daydream(self)
        self.byoc = Byoc(self)
        self._runner: web.AppRunner | None = None
        self.loop_lag: LoopLag | None = None
        self.port: int | None = None
        self.cli_port: int | None = None
        self._cli: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def whep_url(self, name: str, request_id: str) -> str:
        """go-livepeer generateWhepUrl: $LIVE_AI_WHEP_URL + {stream}-{requestID}-out/whep."""
        base = self.config.whep_base_url or f"{self.url}/live/video-to-video/"
        return f"{base}{name}-{request_id}-out/whep"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[_cors])
        base = "/live/video-to-video/"
        app.add_routes([
            web.post(base + "{stream}/whip", self.whip),
            web.route("*", base + "{stream}/whip/{id}", self.no_resource_method),
            web.post(base + "{path}/whep", self.whep), web.patch(base + "{path}/whep", self.not_implemented),
            web.post(base + "{stream}/update", self.update),
            web.get(base + "{streamId}/status", self.status),
            web.get("/debug/streams", self.debug_list), web.get("/debug/streams/{id}", self.debug_stream),
            web.post("/debug/capacity", self.debug_capacity),
            web.options("/{tail:.*}", self.preflight),
            *self.daydream.routes(), *self.byoc.routes(),
        ])
        return app

    def cli_app(self) -> web.Application:
        """go-livepeer's CLI web server (``server/webserver.go``), on its own port: the capacity."""
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.add_routes([web.get("/getNetworkCapabilities", self.capabilities)])
        return app

    @property
    def cli_url(self) -> str:
        return f"http://{self.config.host}:{self.cli_port}"

    async def start(self) -> None:
        set_ice_failed_timeout(self.config.ice_failed_timeout_s)
        self.loop_lag = LoopLag()
        self.loop_lag.start()
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=HANDLER_GRACE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        sockets = list(getattr(site._server, "sockets", None) or [])  # a TCP site serves an asyncio.Server
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        self._cli = web.AppRunner(self.cli_app(), handle_signals=False, access_log=None,
                                  shutdown_timeout=HANDLER_GRACE_S)
        await self._cli.setup()
        cli = web.TCPSite(self._cli, self.config.host, self.config.cli_port)
        await cli.start()
        sockets = list(getattr(cli._server, "sockets", None) or [])
        self.cli_port = sockets[0].getsockname()[1] if sockets else self.config.cli_port

    async def stop(self) -> None:
        """Close every stream's peer connections (within SHUTDOWN_TIMEOUT_S), then the server: a request
        still in its handler HANDLER_GRACE_S after that is cancelled."""
        try:
            await asyncio.wait_for(asyncio.gather(*(s.close("gateway shutdown") for s in list(self.live.values())),
                                                  return_exceptions=True), SHUTDOWN_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("gateway shutdown: streams still closing after %g s; stopping the server", SHUTDOWN_TIMEOUT_S)
        for runner in (self._runner, self._cli):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._cli = None
        if self.loop_lag is not None:
            self.loop_lag.stop()
            self.loop_lag = None

    # --- network bookkeeping ------------------------------------------------------

    def _forget_old(self) -> None:
        """Keep the truth of every open stream and of the last MAX_CLOSED_STREAMS closed ones."""
        closed = [key for key, s in self.history.items() if s.closed]
        for key in closed[: max(0, len(closed) - MAX_CLOSED_STREAMS)]:
            del self.history[key]

    def released(self, stream: Stream) -> None:
        if stream.lease is not None:
            self.network.release(stream.lease)
        if self.live.get(stream.name) is stream:
            del self.live[stream.name]
        retention = self.config.status_retention_s
        asyncio.get_running_loop().call_later(retention, self._expire_status, stream)

    def _expire_status(self, stream: Stream) -> None:
        if self.status_store.get(stream.id) is stream:
            del self.status_store[stream.id]

    async def open_stream(self, request: web.Request, name: str, pipeline: str, params: dict[str, Any],
                          stream_id: str, orchestrator: str = "", include_uris: tuple[str, ...] = (),
                          exclude_uris: tuple[str, ...] = (), request_id: str | None = None,
                          flat_status: dict[str, Any] | None = None) -> web.Response:
        """go-livepeer CreateWHIP: answer the offer with 201 at once; selection and the gather run after. A live
        stream of the same name is replaced (``_take_over``). ``flat_status``: a BYOC stream's status map."""
        if request.headers.get("Content-Type") != SDP:  # an exact string compare, as go-livepeer does
            return _text(415, "Unsupported Media Type, expected application/sdp")
        if name not in self.live and len(self.live) >= self.config.max_streams:
            return _text(503, f"the gateway is at its limit of {self.config.max_streams} streams")
        offer = await request.text()
        stream = Stream(self, name, stream_id, pipeline, params, orchestrator, include_uris, exclude_uris,
                        request.headers.get("User-Agent", ""), request_id)
        stream.reports.flat_status = flat_status
        try:
            answer = await stream.answer_whip(offer)
        except Exception as exc:  # noqa: BLE001 - aiortc raises several types for an unusable offer
            await stream.close(f"bad offer: {exc}")
            return _text(400, f"SetRemoteDescription failed: {exc}")
        # the gateway's own fault, before any orchestrator is chosen: drawn by the orchestrator= query
        if self.network.faults_for(orchestrator, orchestrator, kinds=("ice_never",)):
            answer = re.sub(r"a=candidate:[^\r\n]*\r?\n", "", answer)
            answer = re.sub(r"(c=IN IP4 )\S+", r"\g<1>192.0.2.255", answer)
            stream.event("fault", kind="ice_never")
        older = self.live.get(name)
        self.live[name] = stream
        self.status_store[stream_id] = stream
        self.history[stream.key] = stream
        self._forget_old()
        if older is not None:
            self._take_over(older, stream)
        stream.begin()
        return _created(request, answer, stream.reports.gateway_status["whep_url"], self.ice_servers)

    def _take_over(self, older: Stream, newer: Stream) -> None:
        """go-livepeer registerControl: a newer stream of the same name replaces the older (no 409). The older's
        control channel is closed and its entry marked closed, which wakes its waiting WHEP requests (404);
        its orchestrator's run then ends and, its input no longer owning the name, it does not swap: its
        error is recorded and its publisher's peer connection closed (kickInput). One status per streamId:
        with the same streamId, that error lands in the newer stream's status (StoreIfNotExists)."""
        if older.id == newer.id:
            older.reports.gateway_status = newer.reports.gateway_status
        older.replaced = True
        older.output_set.set()
        older.event("replaced", request_id=newer.request_id)
        # with a job: its control publisher closed; still selecting: startControlPublish finds another's entry
        older.fail(CONTROL_LOST if older.lease is not None else "control session did not exist")

    async def refused(self, request: web.Request) -> web.Response:
        """go-livepeer CreateWhip when the auth webhook refuses the stream key: CreateWHIP, running beside the
        webhook, still answers 201; the peer connection is then closed, and nothing is registered or stored."""
        if request.headers.get("Content-Type") != SDP:
            return _text(415, "Unsupported Media Type, expected application/sdp")
        try:
            answer = await answer_and_close(await request.text())
        except Exception as exc:  # noqa: BLE001 - aiortc raises several types for an unusable offer
            return _text(400, f"SetRemoteDescription failed: {exc}")
        playback = self.whep_url(request.match_info["stream"], secrets.token_hex(4))
        return _created(request, answer, playback, self.ice_servers)

    # --- go-livepeer dialect -----------------------------------------------------

    async def preflight(self, request: web.Request) -> web.Response:  # answered by the CORS middleware
        return web.Response(status=204)

    async def no_resource_method(self, request: web.Request) -> web.Response:
        """The WHIP resource (``Location``) has no handler in go-livepeer: a DELETE falls through to 405."""
        return _text(405, "Method Not Allowed")

    async def not_implemented(self, request: web.Request) -> web.Response:
        return web.Response(status=501)

    async def whip(self, request: web.Request) -> web.Response:
        q, name = request.query, request.match_info["stream"]
        try:
            params = json.loads(q["params"]) if q.get("params") else {}
        except json.JSONDecodeError:
            return _text(400, "Invalid pipeline params")
        if not isinstance(params, dict):
            return _text(400, "Invalid pipeline params")
        if refuses(self.config.refused_streams, name):  # the auth webhook, on the stream key (bearer tokens unread)
            return await self.refused(request)
        preset = self.daydream.preset(name)  # the auth webhook's answer overrides pipeline, params, streamId
        if preset is not None:
            return await self.open_stream(request, name, preset["pipeline"], preset["params"], preset["id"],
                                          q.get("orchestrator", ""))
        return await self.open_stream(request, name, q.get("pipeline", ""), params, q.get("streamId", ""),
                                      q.get("orchestrator", ""))

    async def whep(self, request: web.Request) -> web.Response:
        """go-livepeer CreateWhep: the path is {stream}-{requestID}-out (or {stream}-out); split on '-'."""
        parts = request.match_info["path"].split("-")
        if len(parts) == 3 and parts[2] == "out":
            name, request_id = parts[0], parts[1]
        elif len(parts) == 2 and parts[1] == "out":
            name, request_id = parts[0], ""
        else:
            return _text(404, "Malformed stream ID")
        stream = self.live.get(name)
        if stream is None or (request_id and request_id != stream.request_id):
            return _text(404, "Stream not found")
        return await self.serve_whep(request, stream)

    async def serve_whep(self, request: web.Request, stream: Stream) -> web.Response:
        if request.headers.get("Content-Type") != SDP:
            return _text(415, "Unsupported Media Type, expected application/sdp")
        if stream.viewers_open() >= self.config.max_whep_viewers:
            return _text(429, "Too many viewers for this stream")
        offer = await request.text()
        # go-livepeer's WHEP blocks until the orchestrator's output exists, during selection too
        # (getOutWriter, then the mpegts reader's Initialize); an output closed by a swap fails at once
        out = await stream.wait_output()
        if out is None:
            return _text(404, "Stream not found")
        try:
            answer = await stream.answer_whep(offer, out)
            if answer is None:  # the output closed (a swap, or the stream's end) before it had a frame
                return _text(404, "Failed to initialize mpegts reader")
        except Exception as exc:  # noqa: BLE001 - aiortc raises several types for an unusable offer
            return _text(400, f"SetRemoteDescription failed: {exc}")
        return web.Response(status=201, text=answer, content_type=SDP)  # no Location, as go-livepeer

    async def update(self, request: web.Request) -> web.Response:
        stream = self.live.get(request.match_info["stream"])
        if stream is None:
            return _text(404, "Stream not found")
        try:
            params = json.loads(await request.read())
        except json.JSONDecodeError as exc:
            return _text(400, f"body is not JSON: {exc.msg}")
        if not isinstance(params, dict):
            return _text(400, "params must be a JSON object")
        stream.set_params(params)
        return web.Response(status=200)

    async def status(self, request: web.Request) -> web.Response:
        stream = self.status_store.get(request.match_info["streamId"])
        if stream is None:
            return _text(404, "Stream not found")
        return web.json_response(stream.reports.status())

    async def capabilities(self, request: web.Request) -> web.Response:
        return web.json_response(self.network.capabilities())

    # --- truth -----------------------------------------------------------------

    async def debug_list(self, request: web.Request) -> web.Response:
        streams = [s.reports.summary() for s in self.history.values()]
        return web.json_response({"open": sum(1 for s in streams if s["open"]), "streams": streams,
                                  # the gateway's own health: a loop that ran late stamped frames late
                                  "loop": self.loop_lag.report() if self.loop_lag else None})

    async def debug_stream(self, request: web.Request) -> web.Response:
        key = request.match_info["id"]
        stream = self.history.get(key) or next((s for s in self.history.values() if key in (s.id, s.name)), None)
        if stream is None:
            return _error(404, "no such stream")
        return web.json_response(stream.reports.truth())

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


async def serve(config: GatewayConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT / SIGTERM, then shut down cleanly (every peer connection closed)."""
    gateway = ReferenceGateway(config)
    await gateway.start()
    freeze_gc()  # a full collection over every module would stall the loop ~40 ms: frames stamped late
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_PREFIX}{gateway.url} {CLI_MARK}{gateway.cli_url}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    await gateway.stop()
