"""What leaves the reference gateway for its WHEP viewers: the processed frames encoded once as H.264,
a track per viewer that starts at the first keyframe (go-livepeer's WHEP server waits for an IDR), and
the truth of delivery, timed where each frame's last RTP packet leaves.
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fleet.gateway.rtpclock import VIDEO_CLOCK, unwrap
from fleet.gateway.truth import MAX_TRUTH_FRAMES

SUBSCRIBER_QUEUE = 90          # frames buffered per WHEP viewer before the oldest is dropped


class Output:
    """One orchestrator's output at the gateway (go-livepeer: the ring buffer one trickle subscription
    writes, ``setOutWriter``): ``ready`` once its first frame exists, ``closed`` once that orchestrator is
    gone (a swap, or the stream's end). A WHEP request attaches to the output current when it arrives."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()


class OutputTrack(MediaStreamTrack):
    """What one WHEP viewer receives: encoded frames, from the first keyframe on (go-livepeer: hasIDR)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.Packet[Any] | None] = asyncio.Queue()
        self.first_pts90: list[int] = []  # the RTP-clock pts of the first frame handed to the sender
        self.started = False              # a keyframe has gone out: the viewer can decode from here
        self.finished = False             # its output ended (a swap, or the stream's end): nothing more comes
        self.frames_sent = 0
        self.awaiting_keyframe = 0        # frames dropped before the first keyframe
        # truth: (output pts on the RTP clock, loop time its last packet left) per frame sent to this viewer
        self.egress: deque[tuple[int, float]] = deque(maxlen=MAX_TRUTH_FRAMES)
        self.main_pt: int | None = None   # the media payload type (any other is a retransmission)
        self.seq_first: int | None = None  # media sequence numbers sent to this viewer: first and highest,
        self.seq_highest: int | None = None  # unwrapped (first transmissions are consecutive)
        self.packets_dropped = 0          # transmissions the packet_loss fault dropped (a NACK may resend)
        self.undelivered: set[int] = set()  # sequence numbers dropped and not (yet) delivered by a resend

    @property
    def packets_sent(self) -> int:
        """Distinct media packets sent (a retransmission reuses its sequence number)."""
        if self.seq_first is None or self.seq_highest is None:
            return 0
        return self.seq_highest - self.seq_first + 1

    def push(self, packet: av.Packet[Any] | None, keyframe: bool = False) -> None:
        if packet is None:
            self.finished = True
        if packet is not None and not self.started:
            if not keyframe:
                self.awaiting_keyframe += 1
                return
            self.started = True
        if self.queue.qsize() >= SUBSCRIBER_QUEUE:
            self.queue.get_nowait()
        self.queue.put_nowait(packet)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self.queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        if not self.first_pts90 and packet.pts is not None and packet.time_base is not None:
            self.first_pts90.append(round(packet.pts * packet.time_base * VIDEO_CLOCK))
        self.frames_sent += 1
        return packet


def time_egress(sender: Any, track: OutputTrack, clock: Callable[[], float], drop: Callable[[], bool],
                left: Callable[[int, float], None] | None = None) -> None:
    """Truth of delivery for one viewer: when each frame's last packet left (``clock()``), into
    ``track.egress``, and to ``left(pts90, t)`` when given. ``drop()`` says whether to lose this media
    packet on the way (the packet_loss fault; a NACK may still bring it back)."""
    dtls = sender.transport
    original = dtls._send_rtp
    origin: list[int] = []

    async def send_rtp(data: bytes) -> None:
        pt = data[1] & 0x7F if len(data) >= 12 else 0
        if pt >= 96 and (track.main_pt is None or pt == track.main_pt):
            track.main_pt = pt
            seq = int.from_bytes(data[2:4], "big")
            unwrapped = unwrap(track.seq_highest, seq, 16)
            track.seq_highest = max(unwrapped, track.seq_highest if track.seq_highest is not None else unwrapped)
            if track.seq_first is None:
                track.seq_first = unwrapped
            if drop():
                track.packets_dropped += 1
                track.undelivered.add(seq)
                return
            track.undelivered.discard(seq)
        await original(data)
        if len(data) < 12 or not data[1] & 0x80 or pt < 96 or pt != track.main_pt:
            return  # RTCP, a retransmission, or not the last packet of a frame
        ts = int.from_bytes(data[4:8], "big")
        if not origin:
            if not track.first_pts90:
                return
            origin.append(ts - track.first_pts90[0])
        pts90 = (ts - origin[0]) & 0xFFFFFFFF
        if track.egress and (pts90 - track.egress[-1][0]) & 0xFFFFFFFF >= 1 << 31 or \
                track.egress and pts90 == track.egress[-1][0]:
            return  # a retransmission (NACK): the frame left the first time
        t = clock()
        track.egress.append((pts90, t))
        if left is not None:
            left(pts90, t)

    dtls._send_rtp = send_rtp


class H264Encoder:
    """Processed frames as H.264 constrained baseline, encoded once for every viewer, with an IDR once
    ``gop_s`` of media time has passed since the last (ai-runner trickle/encoder.py: by timestamp, not by
    frame count) and the frame's media time kept as the packet's pts."""

    def __init__(self, gop_s: float, fps: float) -> None:
        self.gop_s, self.fps = gop_s, fps
        self.context: Any = None
        self.encoded = 0
        self.last_idr: float | None = None    # media time of the last IDR

    def _open(self, frame: av.VideoFrame) -> Any:
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = frame.width, frame.height, "yuv420p"
        enc.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        enc.framerate = fractions.Fraction(round(self.fps))
        enc.bit_rate = 1_000_000
        enc.profile = "Baseline"
        gop = max(1, round(self.gop_s * self.fps)) * 4   # x264's own keyframes only as a backstop
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "level": "31", "forced-idr": "1",
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1"}
        return enc

    def encode(self, frame: av.VideoFrame) -> av.Packet[Any] | None:
        if self.context is None:
            self.context = self._open(frame)
        pts, time_base = frame.pts, frame.time_base
        media = float(pts * time_base) if pts is not None and time_base else self.encoded / self.fps
        idr = self.last_idr is None or media - self.last_idr >= self.gop_s or media < self.last_idr
        if idr:
            self.last_idr = media
        frame.pict_type = av.video.frame.PictureType.I if idr else av.video.frame.PictureType.NONE
        frame.pts = round(pts * time_base * VIDEO_CLOCK) if pts is not None and time_base else self.encoded
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.encoded += 1
        packets = list(self.context.encode(frame))
        if not packets:
            return None
        packet = av.Packet(b"".join(bytes(p) for p in packets))
        packet.pts, packet.time_base = frame.pts, frame.time_base
        packet.is_keyframe = any(p.is_keyframe for p in packets)
        return packet
