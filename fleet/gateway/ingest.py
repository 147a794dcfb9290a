"""What the reference gateway reads of its publisher's RTP, by its own means (the probe's RTP tap is what
the truth judges, so the gateway does not use it).

Every packet of the WHIP receiver is seen on arrival (aiortc still does RTCP, NACK, statistics and, in
processing mode, the decoding: the gateway is a peer like any other). The gateway needs of it: the codec
(the media gather refuses one it does not take), the SSRC (its keyframe requests), packet counts and
losses (``ingest_metrics``), when each frame's last packet reached the socket (the runner's input time:
the marker bit, or the last packet seen when the marker was lost; ``fleet.gateway.arrivals``, asked from
ICE's completion on, before any media), and, in relay mode, the encoded frames themselves, which aiortc's
own payload descriptors depacketize (H.264 as an Annex B access unit, VP8 as its payload).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

from fleet.gateway.arrivals import SocketArrivals
from fleet.gateway.rtpclock import unwrap
from fleet.webrtc import receiver_codec, starve_decoder, tap_rtp

__all__ = ["InFrame", "Ingest"]

TAKEN = ("VP8", "H264")  # codecs whose frames are reassembled; any other is reported as unsupported
NAL_IDR = 5


@dataclass(slots=True)
class InFrame:
    """One frame of the publisher's, as it arrived."""

    timestamp: int        # RTP timestamp, unwrapped (still carries the sender's random origin)
    arrival: float        # when its last packet reached the gateway's socket (time.monotonic()'s clock)
    data: bytes           # the encoded frame (relay mode; empty otherwise)
    keyframe: bool        # a decoder can start here (relay mode)
    complete: bool        # no packet of it was missing


def idr_in(access_unit: bytes) -> bool:
    """An Annex B access unit holds an IDR slice."""
    i = access_unit.find(b"\x00\x00\x01")
    while 0 <= i < len(access_unit) - 3:
        if access_unit[i + 3] & 0x1F == NAL_IDR:
            return True
        i = access_unit.find(b"\x00\x00\x01", i + 3)
    return False


class _NoDecoding:
    """Stands in for aiortc's decoder queue in relay mode: frames are dropped, the stop sentinel goes through."""

    def __init__(self) -> None:
        self._q: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        if item is None:
            self._q.put(None)

    def get(self) -> Any:
        return self._q.get()


class Ingest:
    """The publisher's packets, seen on arrival; frames handed to ``on_frame`` (with their data when ``relay``)."""

    def __init__(self, receiver: RTCRtpReceiver, on_frame: Callable[[InFrame], None], relay: bool) -> None:
        self.receiver, self.on_frame, self.relay = receiver, on_frame, relay
        self.codec: str | None = None        # "H264" or "VP8", once a packet of it arrived
        self.unsupported: str | None = None  # another codec's name, when one arrived
        self.ssrc: int | None = None
        self.packets = 0
        self._first_seq: int | None = None
        self._seq: int | None = None         # the highest sequence number, unwrapped
        self._ts: int | None = None          # the last timestamp, unwrapped
        self._kinds: dict[int, str | None] = {}
        self._frame_ts: int | None = None    # the frame being gathered: its timestamp, parts, last arrival
        self._parts: list[bytes] = []
        self._last = 0.0
        self._ok = True
        self._next_seq: int | None = None
        self._arrivals = SocketArrivals()    # when each packet reached the socket, not when it was handled
        if relay:
            starve_decoder(receiver, _NoDecoding())  # before receive() starts the decoder thread
        self._original = tap_rtp(receiver, self._handle)
        ice = receiver.transport.transport
        ice.on("statechange", self._watch)  # ICE completes with its pair nominated, before DTLS and any media

    def _watch(self) -> None:
        if not self._arrivals.watching:
            self._arrivals.watch(self.receiver.transport.transport._connection)

    @property
    def packets_lost(self) -> int:
        expected = 0 if self._first_seq is None or self._seq is None else self._seq - self._first_seq + 1
        return max(0, expected - self.packets)

    async def _handle(self, packet: Any, arrival_time_ms: int) -> None:
        if not self._arrivals.watching:  # ICE completed before this receiver (the pair is nominated once media flows)
            self._watch()
        at = self._arrivals.arrival(packet.ssrc, packet.sequence_number)
        self.packet(packet, time.monotonic() if at is None else at)
        await self._original(packet, arrival_time_ms)

    def _kind(self, payload_type: int) -> str | None:
        """The codec's name, or None (not negotiated yet, or a retransmission); cached once negotiated."""
        kind = self._kinds.get(payload_type, "")
        if kind == "":
            codec = receiver_codec(self.receiver, payload_type)
            kind = None if codec is None or codec.name.lower() == "rtx" else codec.name
            if codec is not None:
                self._kinds[payload_type] = kind
        return kind

    def packet(self, packet: Any, now: float) -> None:
        kind = self._kind(packet.payload_type)
        if kind is None:
            return  # retransmissions are aiortc's
        if kind not in TAKEN:
            self.unsupported = kind
            return
        self.codec = kind
        if self.ssrc is None:
            self.ssrc = packet.ssrc
        elif packet.ssrc != self.ssrc:
            return
        self.packets += 1
        seq = packet.sequence_number
        if self._seq is not None and (seq - self._seq) & 0xFFFF >= 0x8000:
            return  # late or duplicate: counted as received, not gathered
        self._seq = unwrap(self._seq, seq, 16)
        if self._first_seq is None:
            self._first_seq = self._seq
        self._ts = ts = unwrap(self._ts, packet.timestamp, 32)
        if self._frame_ts is not None and ts != self._frame_ts:
            self._finish(complete=False, now=self._last)  # the previous frame lost its last packet
        self._gather(kind, packet, ts, seq, now)

    def _gather(self, kind: str, packet: Any, ts: int, seq: int, now: float) -> None:
        data, starts = b"", True
        if self.relay:
            try:
                if kind == "H264":
                    h264, data = H264PayloadDescriptor.parse(packet.payload)
                    starts = h264.first_fragment
                else:
                    vp8, data = VpxPayloadDescriptor.parse(packet.payload)
                    starts = bool(vp8.partition_start and vp8.partition_id == 0)
            except ValueError:
                self._ok = False
                return
        if self._frame_ts is None:
            self._frame_ts, self._parts, self._ok, self._next_seq = ts, [], starts, seq
        if seq != self._next_seq:
            self._ok = False
        self._next_seq = (seq + 1) & 0xFFFF
        self._parts.append(data)
        self._last = now
        if packet.marker:
            self._finish(complete=self._ok, now=now)

    def _finish(self, complete: bool, now: float) -> None:
        data = b"".join(self._parts)
        key = complete and bool(data) and (idr_in(data) if self.codec == "H264" else not data[0] & 0x01)
        frame = InFrame(timestamp=self._frame_ts or 0, arrival=now, data=data, keyframe=key, complete=complete)
        self._frame_ts, self._parts, self._next_seq = None, [], None
        self.on_frame(frame)
