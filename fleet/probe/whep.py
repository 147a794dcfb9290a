"""Subscribing to a stream's output over WHEP, as go-livepeer answers it.

go-livepeer's WHEP handler blocks until the stream's output exists (``getOutWriter``,
server/ai_live_video.go), during orchestrator selection and the runner's cold start too: a slow start
is a slow answer, never a 404. So the request is bounded by the session's own deadline (the startup
deadline for the first subscription, the session's end after a swap), never by the HTTP client's
transport timeout; a request still waiting then is abandoned (its connection closed) and the class
says ``startup_deadline``. Two answers mean "not yet" and are asked again every ``WHEP_RETRY_S``:
404 "Stream not found" (a gateway that answers before its stream is registered) and, right after a
swap, 404 "Failed to initialize mpegts reader" (the swapped-away output is still held).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from fleet.errors import ProbeFailure, status_error

__all__ = ["NOT_YET", "WHEP_RETRY_S", "subscribe"]

WHEP_RETRY_S = 0.25
NOT_YET = ("stream not found", "failed to initialize mpegts reader")   # 404 bodies that mean "ask again"


def _not_yet(resp: httpx.Response) -> bool:
    text = resp.text.strip().lower()
    return resp.status_code == 404 and any(text.startswith(t) for t in NOT_YET)


async def _first(task: asyncio.Task[Any], abandon: tuple[asyncio.Event, ...], timeout: float) -> bool:
    """Until ``task`` is done (True) or an ``abandon`` event is set or ``timeout`` passes (False, task cancelled)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in abandon]
    try:
        await asyncio.wait([task, *waiters], timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    if task.done():
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def _post(client: httpx.AsyncClient, url: str, sdp: str, headers: dict[str, str],
                deadline: float) -> httpx.Response:
    timeout = max(0.001, deadline - time.monotonic())
    return await client.post(url, content=sdp, headers={"Content-Type": "application/sdp", **headers},
                             timeout=httpx.Timeout(timeout))


async def subscribe(client: httpx.AsyncClient, url: str, pc: RTCPeerConnection, headers: dict[str, str],
                    deadline: float, abandon: tuple[asyncio.Event, ...], what: str) -> float | None:
    """Offer ``pc`` to ``url`` until answered or ``deadline`` (time.monotonic()); the seconds the answered
    request took, or None when an ``abandon`` event was set first. Raises ``ProbeFailure``: past the
    deadline ``startup_deadline`` (``what`` names the deadline), any other answer ``whep_http_NNN``."""
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    while True:
        t = time.monotonic()
        task = asyncio.ensure_future(_post(client, url, sdp, headers, deadline))
        if not await _first(task, abandon, deadline - t):
            if any(e.is_set() for e in abandon):
                return None
            raise ProbeFailure("pipeline", "startup_deadline", f"no WHEP answer within {what}")
        try:
            resp = task.result()
        except httpx.TimeoutException:
            raise ProbeFailure("pipeline", "startup_deadline", f"no WHEP answer within {what}") from None
        except httpx.HTTPError as exc:
            raise ProbeFailure("signaling", "whep_transport", type(exc).__name__) from None
        if not _not_yet(resp):
            break
        pause = asyncio.ensure_future(asyncio.sleep(min(WHEP_RETRY_S, max(0.0, deadline - time.monotonic()))))
        await _first(pause, abandon, WHEP_RETRY_S)
        if any(e.is_set() for e in abandon):
            return None
        if time.monotonic() >= deadline:
            raise ProbeFailure("signaling", status_error("whep_http", resp.status_code), resp.text.strip()[:200])
    if resp.status_code not in (200, 201):
        raise ProbeFailure("signaling", status_error("whep_http", resp.status_code), resp.text.strip()[:200])
    took = time.monotonic() - t
    try:
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    except (ValueError, AttributeError) as exc:
        raise ProbeFailure("signaling", "bad_whep_answer", str(exc)[:120]) from None
    return took
