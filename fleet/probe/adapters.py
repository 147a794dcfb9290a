"""Gateway dialects: how a session starts, updates, polls and stops a stream.

Each adapter speaks one dialect of shared/LIVEPEER.md over HTTP; the WebRTC
side is the same for all (WHIP offer in, SDP answer and a WHEP URL out).
Failures are raised as ``ProbeFailure`` with the phase and an error class,
never as a bare HTTP or transport exception; tokens never appear in them.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

__all__ = ["Adapter", "ByocAdapter", "DaydreamAdapter", "LivepeerAdapter", "ProbeFailure", "Started", "adapter_for",
           "stop_stream"]

NO_CAPACITY_MARKERS = ("gateway_no_orchestrators_available", "no orchestrators available")
MAX_ERROR_TEXT = 200


class ProbeFailure(Exception):
    """Why a session failed: the phase it happened in and a short error class (no secrets)."""

    def __init__(self, phase: str, error: str, detail: str = "", skipped: bool = False) -> None:
        super().__init__(f"{phase}: {error}" + (f" ({detail})" if detail else ""))
        self.phase, self.error, self.detail, self.skipped = phase, error, detail, skipped


@dataclass
class Started:
    answer_sdp: str
    whep_url: str
    stream_id: str | None
    location: str | None


def _snippet(resp: httpx.Response) -> str:
    text = resp.text.strip().replace("\n", " ")
    return text[:MAX_ERROR_TEXT]


def _check(resp: httpx.Response, phase: str, ok: tuple[int, ...]) -> None:
    if resp.status_code in ok:
        return
    text = resp.text.lower()
    if resp.status_code == 503 and any(m in text for m in NO_CAPACITY_MARKERS):
        raise ProbeFailure("capacity", "no_orchestrators_available", _snippet(resp), skipped=True)
    raise ProbeFailure(phase, f"http_{resp.status_code}", _snippet(resp))


async def _request(client: httpx.AsyncClient, phase: str, method: str, url: str, **kw: Any) -> httpx.Response:
    try:
        return await client.request(method, url, **kw)
    except httpx.TimeoutException:
        raise ProbeFailure(phase, "timeout", f"{method} {url}") from None
    except httpx.HTTPError as exc:
        raise ProbeFailure(phase, "http_transport", f"{method} {url}: {type(exc).__name__}") from None


class Adapter:
    """One stream's control plane. Subclasses fill the dialect-specific parts."""

    dialect = "livepeer"

    def __init__(self, base_url: str, pipeline: str, token: str | None = None,
                 orchestrator: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.pipeline = pipeline
        self.token = token
        self.orchestrator = orchestrator
        self.name = f"fleet-{uuid.uuid4().hex[:12]}"
        self.started: Started | None = None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _whip(self, client: httpx.AsyncClient, url: str, offer: str,
                    params: dict[str, str] | None = None) -> Started:
        resp = await _request(client, "signaling", "POST", url, params=params, content=offer,
                              headers={"Content-Type": "application/sdp", **self.auth()})
        _check(resp, "signaling", (200, 201))
        location = resp.headers.get("Location")
        playback = resp.headers.get("Livepeer-Playback-URL")
        if not resp.text.startswith("v=0"):
            raise ProbeFailure("signaling", "bad_answer", "the WHIP answer is not SDP")
        return Started(resp.text, urljoin(url, playback) if playback else "", resp.headers.get("X-Stream-Id"),
                       urljoin(url, location) if location else None)

    async def start(self, client: httpx.AsyncClient, offer: str, params: dict[str, Any]) -> Started:
        query = {"pipeline": self.pipeline, "params": json.dumps(params), "streamId": self.name}
        if self.orchestrator:
            query["orchestrator"] = self.orchestrator
        self.started = await self._whip(client, f"{self.base}/live/video-to-video/{self.name}/whip", offer, query)
        if not self.started.whep_url:
            raise ProbeFailure("signaling", "no_playback_url", "the answer has no Livepeer-Playback-URL")
        return self.started

    async def update(self, client: httpx.AsyncClient, params: dict[str, Any]) -> None:
        resp = await _request(client, "pipeline", "POST", f"{self.base}/live/video-to-video/{self.name}/update",
                              content=json.dumps(params), headers={"Content-Type": "application/json", **self.auth()})
        _check(resp, "pipeline", (200, 204))

    async def status(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        resp = await _request(client, "pipeline", "GET", f"{self.base}/live/video-to-video/{self.name}/status",
                              headers=self.auth())
        return resp.json() if resp.status_code == 200 else None

    def stop_request(self) -> tuple[str, str] | None:
        """(method, url) that stops the stream at the gateway, once it exists (no credentials in it)."""
        if self.started and self.started.location:
            return ("DELETE", self.started.location)
        return None

    async def stop(self, client: httpx.AsyncClient) -> None:
        """Stop at the gateway: DELETE on the WHIP resource (RFC 9725) when one was given."""
        req = self.stop_request()
        if req:
            await _request(client, "teardown", req[0], req[1], headers=self.auth())


class LivepeerAdapter(Adapter):
    dialect = "livepeer"


class DaydreamAdapter(Adapter):
    """``/v1/streams`` create, then WHIP to the returned URL; PATCH updates, DELETE stops."""

    dialect = "daydream"

    async def start(self, client: httpx.AsyncClient, offer: str, params: dict[str, Any]) -> Started:
        resp = await _request(client, "signaling", "POST", f"{self.base}/v1/streams",
                              json={"pipeline": self.pipeline, "params": params}, headers=self.auth())
        _check(resp, "signaling", (200, 201))
        body = resp.json()
        self.name = body.get("id") or self.name
        self.created = True
        started = await self._whip(client, body["whip_url"], offer)
        whep = started.whep_url or body.get("whep_url") or ""
        if not whep:
            raise ProbeFailure("signaling", "no_playback_url", "neither the stream nor the answer names a WHEP URL")
        self.started = Started(started.answer_sdp, whep, self.name, None)
        return self.started

    async def update(self, client: httpx.AsyncClient, params: dict[str, Any]) -> None:
        resp = await _request(client, "pipeline", "PATCH", f"{self.base}/v1/streams/{self.name}",
                              json={"params": params}, headers=self.auth())
        _check(resp, "pipeline", (200, 204))

    async def status(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        resp = await _request(client, "pipeline", "GET", f"{self.base}/v1/streams/{self.name}", headers=self.auth())
        return resp.json() if resp.status_code == 200 else None

    def stop_request(self) -> tuple[str, str] | None:
        return ("DELETE", f"{self.base}/v1/streams/{self.name}") if getattr(self, "created", False) else None


class ByocAdapter(Adapter):
    """``/process/stream/start`` with a base64 JSON job request; the answer names every URL."""

    dialect = "byoc"

    async def start(self, client: httpx.AsyncClient, offer: str, params: dict[str, Any]) -> Started:
        job: dict[str, Any] = {"capability": self.pipeline, "parameters": params}
        if self.orchestrator:
            job["orchestrators"] = {"include": [self.orchestrator]}
        header = base64.b64encode(json.dumps(job).encode()).decode()
        resp = await _request(client, "signaling", "POST", f"{self.base}/process/stream/start",
                              headers={"Livepeer": header, **self.auth()})
        _check(resp, "signaling", (200, 201))
        self.urls = resp.json()
        self.name = self.urls.get("stream_id", self.name)
        started = await self._whip(client, self.urls["whip_url"], offer)
        self.started = Started(started.answer_sdp, self.urls.get("whep_url") or started.whep_url, self.name, None)
        return self.started

    async def update(self, client: httpx.AsyncClient, params: dict[str, Any]) -> None:
        resp = await _request(client, "pipeline", "POST", self.urls["update_url"], json=params, headers=self.auth())
        _check(resp, "pipeline", (200, 204))

    async def status(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        resp = await _request(client, "pipeline", "GET", self.urls["status_url"], headers=self.auth())
        return resp.json() if resp.status_code == 200 else None

    def stop_request(self) -> tuple[str, str] | None:
        return ("POST", self.urls["stop_url"]) if getattr(self, "urls", None) else None


ADAPTERS: dict[str, type[Adapter]] = {"livepeer": LivepeerAdapter, "reference": LivepeerAdapter,
                                      "daydream": DaydreamAdapter, "byoc": ByocAdapter}


def adapter_for(dialect: str, base_url: str, pipeline: str, token: str | None = None,
                orchestrator: str | None = None) -> Adapter:
    return ADAPTERS[dialect](base_url, pipeline, token, orchestrator)


def stop_stream(method: str, url: str, token: str | None = None, timeout_s: float = 10.0) -> bool:
    """Stop a stream whose session died with its tester (sync, for the driver). True when the gateway took it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.request(method, url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return resp.status_code < 300 or resp.status_code == 404
