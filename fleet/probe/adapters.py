"""Gateway dialects: how a session starts, updates, polls and stops a stream.

Each adapter speaks one dialect of shared/LIVEPEER.md over HTTP, as the
upstream sources define it (docs/FIDELITY.md names them); the WebRTC side is
the same for all (WHIP offer in, SDP answer and a WHEP URL out). Failures are
raised as ``ProbeFailure`` with the phase and an error class, never as a bare
HTTP or transport exception; tokens never appear in them.

What the gateway says went wrong comes from its status (``gateway_status.error``),
not from an HTTP code: go-livepeer answers the WHIP offer with 201 before it
selects an orchestrator, and reports "no orchestrators available" only there
(and by closing the peer connection). ``classify_gateway_error`` maps that
message to an outcome; NaaP's excused errors are marked as such. BYOC keeps its
status as one flat map (``whep_url``, ``orchestrator``, ``ingest_metrics``,
``error`` at the top level, replaced whole by each runner report): its adapter
reads it into the live-video shape (``byoc_status_view``), so one reader serves both.
An auth webhook that refuses the stream is the tester's configuration
(``auth_refused``): BYOC says so with 403 "live ai auth failed"; the live-video
WHIP answers 201 and keeps no status (``fleet.probe.classify.blame``).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlparse

import httpx

from fleet.errors import ErrorClass, Outcome, Phase, ProbeFailure, status_error
from fleet.probe.naap import NO_ORCHESTRATORS, excusable, non_fatal
from fleet.webrtc import IceServer, parse_ice_links

__all__ = ["Adapter", "ByocAdapter", "DaydreamAdapter", "GatewayVerdict", "LivepeerAdapter",
           "ProbeFailure", "Started", "USER_AGENT", "adapter_for", "byoc_status_view", "classify_gateway_error",
           "gateway_error", "stop_stream"]

MAX_ERROR_TEXT = 200
BYOC_MIN_TIMEOUT_S = 60
BYOC_GATEWAY_KEYS = ("whep_url", "orchestrator", "ingest_metrics", "error")   # StoreKey'd into BYOC's flat map
AUTH_FAILED = "live ai auth failed"   # BYOC's 403 when the auth webhook refuses (byoc/stream_gateway.go)


def _fleet_version() -> str:
    try:
        return version("fleet")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


# go-livepeer tags a session whose User-Agent contains "Headless" as an end-to-end test (media/whip_server.go)
USER_AGENT = f"livepeer-fleet/{_fleet_version()} (Headless; synthetic test stream)"


@dataclass(frozen=True)
class GatewayVerdict:
    """What the gateway's own error message means for the session."""

    outcome: Outcome    # "skipped_no_capacity" or "failed"
    phase: Phase
    error: ErrorClass
    excused: bool


def classify_gateway_error(message: str) -> GatewayVerdict | None:
    """What the gateway's error means for a session that ended early; None for an error go-livepeer records
    while the stream goes on (``fleet.probe.naap.non_fatal``): the probe's own evidence then stands.
    Excused as NaaP's RULE-LIFECYCLE-004 has it, except "non-h264 video": not excused by NaaP, and the
    tester's own configuration (its codec), never the orchestrator's."""
    text = message.lower()
    if non_fatal(text):
        return None
    excused = excusable(text)
    if NO_ORCHESTRATORS in text:
        return GatewayVerdict("skipped_no_capacity", "capacity", "no_orchestrators_available", True)
    if "non-h264" in text:
        return GatewayVerdict("failed", "tester", "codec_refused", False)
    if "missing video" in text:
        return GatewayVerdict("failed", "media", "missing_video", excused)
    if "ice connection state failed" in text:
        return GatewayVerdict("failed", "ice", "gateway_ice_failed", excused)
    if "whip disconnected" in text:
        return GatewayVerdict("failed", "media", "whip_disconnected", excused)
    return GatewayVerdict("failed", "pipeline", "gateway_error", excused)


def gateway_error(status: Any) -> str | None:
    """``gateway_status.error.error_message`` of a go-livepeer status, if any (None for a status of
    another shape)."""
    gw = status.get("gateway_status") if isinstance(status, dict) else None
    err = gw.get("error") if isinstance(gw, dict) else None
    if isinstance(err, dict):
        msg = err.get("error_message")
        return str(msg) if msg else None
    return str(err) if err else None


def byoc_status_view(status: Any) -> Any:
    """BYOC's flat status map (byoc/stream_gateway.go, byoc/trickle.go: the gateway's keys and the runner's
    last report side by side) in the live-video shape: the gateway's keys under ``gateway_status``, the
    runner's fields as they are. Anything but an object is left for the reader to report."""
    if not isinstance(status, dict):
        return status
    view = {k: v for k, v in status.items() if k not in BYOC_GATEWAY_KEYS}
    view["gateway_status"] = {k: status[k] for k in BYOC_GATEWAY_KEYS if k in status}
    return view


class _KeptGet(NamedTuple):
    client: httpx.AsyncClient
    url: str
    request: httpx.Request


@dataclass
class Started:
    answer_sdp: str
    whep_url: str
    stream_id: str | None
    location: str | None
    request_id: str | None = None
    ice_servers: list[IceServer] = field(default_factory=list)


def _snippet(resp: httpx.Response) -> str:
    return resp.text.strip().replace("\n", " ")[:MAX_ERROR_TEXT]


def _check(resp: httpx.Response, phase: Phase, ok: tuple[int, ...]) -> None:
    if resp.status_code in ok:
        return
    text = resp.text.lower()
    if "no orchestrators" in text:  # BYOC: 400 "No orchestrators found for capability ..."
        raise ProbeFailure("capacity", "no_orchestrators_available", _snippet(resp), skipped=True, excused=True)
    if resp.status_code == 403 and AUTH_FAILED in text:  # BYOC: the auth webhook refused the stream
        raise ProbeFailure("tester", "auth_refused", _snippet(resp))
    raise ProbeFailure(phase, status_error("http", resp.status_code), _snippet(resp))


def _build(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Request:
    """A request of the session's, with the fleet's User-Agent (go-livepeer's test-stream tag) and the client's
    settings (timeout, cookies) as they are now."""
    return client.build_request(method, url, headers={"User-Agent": USER_AGENT, **kw.pop("headers", {})}, **kw)


async def _request(client: httpx.AsyncClient, phase: Phase, method: str, url: str, **kw: Any) -> httpx.Response:
    return await _send(client, phase, _build(client, method, url, **kw))


async def _send(client: httpx.AsyncClient, phase: Phase, request: httpx.Request) -> httpx.Response:
    """``request`` sent, its body read: httpx's errors are mapped here, at the edge, to ``ProbeFailure`` (a
    timeout, or ``http_transport``) naming the method and the URL without its query."""
    try:
        return await client.send(request)
    except httpx.HTTPError as exc:
        where = f"{request.method} {_redact(str(request.url))}"
        if isinstance(exc, httpx.TimeoutException):
            raise ProbeFailure(phase, "timeout", where) from None
        raise ProbeFailure(phase, "http_transport", f"{where}: {type(exc).__name__}") from None


def _redact(url: str) -> str:
    """A URL without its query (which may carry params) or any user and password in it, for error text."""
    p = urlparse(url)
    return f"{p.scheme}://{p.netloc.rpartition('@')[2]}{p.path}"


def request_id_of(whep_url: str) -> str | None:
    """go-livepeer's request id, from a WHEP URL ending ``{stream}-{requestID}-out/whep``."""
    parts = urlparse(whep_url).path.rstrip("/").split("/")
    if len(parts) < 2 or parts[-1] != "whep":
        return None
    pieces = parts[-2].split("-")
    return pieces[-2] if len(pieces) >= 3 and pieces[-1] == "out" else None


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ProbeFailure("signaling", "bad_json", _snippet(resp)) from None


class Adapter:
    """One stream's control plane. Subclasses fill the dialect-specific parts."""

    dialect = "livepeer"

    def __init__(self, base_url: str, pipeline: str, token: str | None = None,
                 orchestrator: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.pipeline = pipeline
        self.token = token
        self.orchestrator = orchestrator   # the orchestrator's service URI (or a part of it)
        # go-livepeer splits WHEP paths on '-': a stream name must have none
        self.name = f"fleet_{uuid.uuid4().hex[:16]}"
        self.started: Started | None = None
        self.said_no_status = False   # the gateway answered a status read with 404: it keeps none for the stream
        self._status_get: _KeptGet | None = None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _whip(self, client: httpx.AsyncClient, url: str, offer: str,
                    params: dict[str, str] | None = None) -> Started:
        resp = await _request(client, "signaling", "POST", url, params=params, content=offer,
                              headers={"Content-Type": "application/sdp", **self.auth()})
        _check(resp, "signaling", (200, 201))
        if not resp.text.startswith("v=0"):
            raise ProbeFailure("signaling", "bad_answer", "the WHIP answer is not SDP")
        location = resp.headers.get("Location")
        playback = resp.headers.get("Livepeer-Playback-URL") or ""
        whep = urljoin(url, playback) if playback else ""
        return Started(resp.text, whep, None, urljoin(url, location) if location else None, request_id_of(whep),
                       parse_ice_links(resp.headers.get_list("Link")))

    async def start(self, client: httpx.AsyncClient, offer: str, params: dict[str, Any]) -> Started:
        query = {"pipeline": self.pipeline, "params": json.dumps(params), "streamId": self.name}
        if self.orchestrator:
            query["orchestrator"] = self.orchestrator
        started = await self._whip(client, f"{self.base}/live/video-to-video/{self.name}/whip", offer, query)
        started.stream_id = self.name
        if not started.whep_url:
            raise ProbeFailure("signaling", "no_playback_url", "the answer has no Livepeer-Playback-URL")
        self.started = started
        return started

    async def update(self, client: httpx.AsyncClient, params: dict[str, Any]) -> None:
        resp = await _request(client, "pipeline", "POST", f"{self.base}/live/video-to-video/{self.name}/update",
                              content=json.dumps(params), headers={"Content-Type": "application/json", **self.auth()})
        _check(resp, "pipeline", (200, 204))

    def status_url(self) -> str:
        return f"{self.base}/live/video-to-video/{self.name}/status"

    async def status(self, client: httpx.AsyncClient) -> Any:
        """The gateway's status of the stream as it sent it (the caller checks its shape); None when it has
        none (yet, or any more). Raises ProbeFailure ``bad_json`` for a body that is not JSON."""
        resp = await _send(client, "pipeline", self._status_request(client))
        if resp.status_code == 404:
            self.said_no_status = True
        if resp.status_code != 200:
            return None
        return _json(resp)

    def _status_request(self, client: httpx.AsyncClient) -> httpx.Request:
        """The status read's GET, built once for a client and URL and sent again every read (it has no body,
        and sending changes nothing in it on a client without auth or request hooks, as ``new_http_client``
        makes); built anew each read while the client holds cookies, which a request takes when it is built."""
        url, kept = self.status_url(), self._status_get
        if kept is None or kept.client is not client or kept.url != url or client.cookies:
            kept = self._status_get = _KeptGet(client, url, _build(client, "GET", url, headers=self.auth()))
        return kept.request

    def stop_request(self) -> tuple[str, str] | None:
        """(method, url) that stops the stream at the gateway, once it exists (no credentials in it).

        go-livepeer has none: closing the peer connection ends the stream (its ICE fails within 10 s).
        """
        return None

    async def stop(self, client: httpx.AsyncClient) -> None:
        req = self.stop_request()
        if req:
            # the stop request is signalling; its failure is a teardown event, never the session's outcome
            resp = await _request(client, "signaling", req[0], req[1], headers=self.auth())
            if resp.status_code >= 300 and resp.status_code not in (404, 405):
                raise ProbeFailure("signaling", status_error("stop_http", resp.status_code), _snippet(resp))


class LivepeerAdapter(Adapter):
    dialect = "livepeer"


class DaydreamAdapter(Adapter):
    """``POST /v1/streams``, then WHIP to its ``whip_url``; PATCH updates, ``DELETE /v1/streams?id=`` stops."""

    dialect = "daydream"
    pipeline_id = "streamdiffusion"

    def _body(self, params: dict[str, Any]) -> dict[str, Any]:
        model = params.get("model_id") or self.pipeline
        return {"pipeline": self.pipeline_id, "params": {**params, "model_id": model}}

    async def start(self, client: httpx.AsyncClient, offer: str, params: dict[str, Any]) -> Started:
        resp = await _request(client, "signaling", "POST", f"{self.base}/v1/streams",
                              json={**self._body(params), "name": self.name, "is_smoke_test": True},
                              headers=self.auth())
        _check(resp, "signaling", (200, 201))
        body = _json(resp)
        if not isinstance(body, dict) or not body.get("id") or not body.get("whip_url"):
            raise ProbeFailure("signaling", "bad_json", "the created stream has no id or whip_url")
        self.name = str(body["id"])
        self.created = True
        started = await self._whip(client, urljoin(self.base + "/", str(body["whip_url"])), offer)
        started.stream_id = self.name
        if not started.whep_url:
            raise ProbeFailure("signaling", "no_playback_url", "the WHIP answer has no Livepeer-Playback-URL")
        self.started = started
        return started

    async def update(self, client: httpx.AsyncClient, params: dict[str, Any]) -> None:
        resp = await _request(client, "pipeline", "PATCH", f"{self.base}/v1/streams/{self.name}",
                              json=self._body(params), headers=self.auth())
        _check(resp, "pipeline", (200, 204))

    def status_url(self) -> str:
        return f"{self.base}/v1/streams/{self.name}/status"

    async def status(self, client: httpx.AsyncClient) -> Any:
        body = await super().status(client)
        if body is None:
            return None
        return body.get("data") if isinstance(body, dict) else body  # a wrong shape: the caller reports it

    def stop_request(self) -> tuple[str, str] | None:
        return ("DELETE", f"{self.base}/v1/streams?id={self.name}") if getattr(self, "created", False) else None


class ByocAdapter(Adapter):
    """``/process/stream/start`` with a ``Livepeer`` job header; the answer names every URL."""

    dialect = "byoc"
    timeout_s = 300

    def _job_header(self) -> str:
        parameters: dict[str, Any] = {"enable_video_ingress": True, "enable_video_egress": True}
        if self.orchestrator:
            parameters["orchestrators"] = {"include": [self.orchestrator]}  # exact orchestrator URLs
        job = {"request": json.dumps({"stream_id": self.name}), "parameters": json.dumps(parameters),
               "capability": self.pipeline, "timeout_seconds": max(BYOC_MIN_TIMEOUT_S, self.timeout_s)}
        return base64.b64encode(json.dumps(job).encode()).decode()

    async def start(self, client: httpx.AsyncClient, offer: str, params: dict[str, Any]) -> Started:
        # no stream_name: go-livepeer would prefix it to the id with a '-', which its WHEP parser refuses
        body = {"stream_name": "", "rtmp_output": "", "stream_id": self.name, "params": json.dumps(params)}
        resp = await _request(client, "signaling", "POST", f"{self.base}/process/stream/start", json=body,
                              headers={"Livepeer": self._job_header(), **self.auth()})
        _check(resp, "signaling", (200, 201))
        urls = _json(resp)
        if not isinstance(urls, dict) or not urls.get("whip_url"):
            raise ProbeFailure("signaling", "bad_json", "the BYOC answer has no whip_url")
        self.urls = urls
        self.name = str(urls.get("stream_id") or self.name)
        started = await self._whip(client, urljoin(self.base + "/", str(urls["whip_url"])), offer)
        started.whep_url = urljoin(self.base + "/", str(urls.get("whep_url") or "")) if urls.get("whep_url") \
            else started.whep_url
        started.request_id = request_id_of(started.whep_url) or started.request_id
        started.stream_id = self.name
        if not started.whep_url:
            raise ProbeFailure("signaling", "no_playback_url", "neither the start answer nor WHIP names a WHEP URL")
        self.started = started
        return started

    async def update(self, client: httpx.AsyncClient, params: dict[str, Any]) -> None:
        resp = await _request(client, "pipeline", "POST", self.urls["update_url"], json=params,
                              headers={"Livepeer": self._job_header(), **self.auth()})
        _check(resp, "pipeline", (200, 204))

    def status_url(self) -> str:
        url: str = self.urls["status_url"]
        return url

    async def status(self, client: httpx.AsyncClient) -> Any:
        """The flat map read into the live-video shape (``byoc_status_view``); None before the start."""
        return byoc_status_view(await super().status(client)) if getattr(self, "urls", None) else None

    def stop_request(self) -> tuple[str, str] | None:
        return ("POST", self.urls["stop_url"]) if getattr(self, "urls", None) else None


ADAPTERS: dict[str, type[Adapter]] = {"livepeer": LivepeerAdapter, "reference": LivepeerAdapter,
                                      "daydream": DaydreamAdapter, "byoc": ByocAdapter}


def adapter_for(dialect: str, base_url: str, pipeline: str, token: str | None = None,
                orchestrator: str | None = None) -> Adapter:
    return ADAPTERS[dialect](base_url, pipeline, token, orchestrator)


def stop_stream(method: str, url: str, token: str | None = None, timeout_s: float = 10.0) -> bool:
    """Stop a stream whose session died with its tester (sync, for the driver). True when the gateway took it."""
    headers = {"User-Agent": USER_AGENT, **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        resp = httpx.request(method, url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return resp.status_code < 300 or resp.status_code == 404
