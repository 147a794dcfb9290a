"""A minimal real aiortc WHIP publisher / WHEP subscriber for the gateway tests.

Not the fleet's probe (that is fleet.session): just enough standards-compliant
client to drive the reference gateway over real loopback WebRTC.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from fleet.webrtc import codecs_named, new_peer_connection, use_host_addresses

use_host_addresses(["127.0.0.1"])

VIDEO_CLOCK = 90_000


class SyntheticTrack(MediaStreamTrack):
    """Frames at ``fps`` whose brightness steps every ``period`` frames (a coarse, visible change)."""

    kind = "video"

    def __init__(self, fps: float = 30.0, size: int = 128, period: int = 15, frames: int | None = None) -> None:
        super().__init__()
        self.fps, self.size, self.period, self.limit = fps, size, period, frames
        self.count = 0
        self.start: float | None = None
        self.sent: dict[int, float] = {}  # pts -> monotonic send time

    async def recv(self) -> av.VideoFrame:
        if self.limit is not None and self.count >= self.limit:
            self.stop()
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.count / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # source pacing, not synchronisation
        level = 60 if (self.count // self.period) % 2 == 0 else 190
        y = np.full((self.size, self.size), level, np.uint8)
        y[: self.size // 8, : (self.count % self.size)] = 235  # a moving bar
        img = np.concatenate([y, np.full((self.size // 2, self.size), 128, np.uint8)])
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = int(self.count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent[frame.pts] = time.monotonic()
        self.count += 1
        return frame


@dataclass
class Received:
    frames: list[tuple[int, float, float]] = field(default_factory=list)  # (pts, monotonic recv, mean luma)
    chroma: list[float] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 1


async def whip_publish(base: str, name: str, track: MediaStreamTrack, codec: str | None = None,
                       path: str | None = None, **query: str):
    """Publish ``track`` (offering only ``codec`` when given) to ``path`` or the go-livepeer WHIP route."""
    pc = new_peer_connection()
    transceiver = pc.addTransceiver(track, direction="sendonly")
    if codec:
        transceiver.setCodecPreferences(codecs_named("video", codec))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(path or f"{base}/live/video-to-video/{name}/whip", params=query,
                                 content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
    if resp.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    return pc, resp


async def whep_subscribe(url: str, received: Received):
    pc = new_peer_connection()
    pc.addTransceiver("video", direction="recvonly")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                img = frame.to_ndarray(format="yuv420p")
                h = frame.height
                received.frames.append((frame.pts, time.monotonic(), float(img[:h].mean())))
                received.chroma.append(float(img[h:].mean()))
                if len(received.frames) >= received.target:
                    received.got.set()
        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
    assert resp.status_code == 201, resp.text
    await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    return pc
