"""Below aiortc's decoder: encoded frames in, encoded frames out.

aiortc's receiver reassembles a frame only when the *next* frame's first
packet arrives (one frame interval of buffering) and then decodes every frame
in a thread. A tester that must time frames without its own buffering, and
cheaply, needs the packets themselves:

- ``FrameTap`` wraps an ``RTCRtpReceiver``: every RTP packet is seen on
  arrival, frames are reassembled on the marker bit (``TapCore``, or its native
  twin ``fleet._rtpnative.Tap`` where the per-packet work is native) and handed
  to a callback with the arrival time of their last packet. aiortc still does
  RTCP, NACK and statistics; with ``decode=False`` its decoder thread is starved so no frame
  is decoded unless the caller decodes it, and with ``bandwidth_feedback=False``
  no REMB is computed or sent; with both, aiortc's jitter buffer and depayloader are
  skipped too (``fleet.leanrtp.lean_receive``: reports and NACKs still go out, their
  counting done with the native tap's reassembly in one call, on aiortc's own
  objects: ``fleet.duties``).
- ``PacketTrack`` (fleet.media) sends pre-encoded frames: aiortc packetizes them
  without encoding, and the lean sender (``fleet.leansend``) sends its clip as
  packetized once per process; a keyframe request moves it to the clip's next
  keyframe.

VP8 (RFC 7741) and H.264 (RFC 6184: single NAL unit, STAP-A and FU-A
packets, packetization-mode 1) are reassembled; an H.264 frame comes out as
an Annex B access unit, ready for a decoder or for re-packetizing. Any other
codec is reported as unsupported rather than guessed at.
"""

from __future__ import annotations

import builtins
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.codecs.vpx import VpxPayloadDescriptor

from fleet.leanrtp import lean_receive
from fleet.srtpcalls import CODEC_H264, CODEC_NAMES, CODEC_VP8, TAP_CODECS, native_tap
from fleet.webrtc import PayloadKinds, drop_bandwidth_estimator, starve_decoder, tap_rtp

__all__ = ["FrameTap", "TapCore", "TapFrame", "H264Depacketizer", "tap_core", "unwrap16", "unwrap32", "vp8_is_keyframe"]

def _unwrap(previous: int | None, value: int, bits: int) -> int:
    if previous is None:
        return value
    delta = (value - previous) & ((1 << bits) - 1)
    if delta >= 1 << (bits - 1):
        delta -= 1 << bits
    return previous + delta


def unwrap32(previous: int | None, value: int) -> int:
    """Unwrap a 32-bit RTP timestamp against the previous unwrapped value."""
    return _unwrap(previous, value, 32)


def unwrap16(previous: int | None, value: int) -> int:
    """Unwrap a 16-bit RTP sequence number against the previous unwrapped value."""
    return _unwrap(previous, value, 16)


def vp8_is_keyframe(frame_data: bytes) -> bool:
    """A VP8 frame (payload, descriptors stripped) is a keyframe when bit 0 of its first byte is 0."""
    return bool(frame_data) and not frame_data[0] & 0x01


START_CODE = b"\x00\x00\x00\x01"
NAL_IDR, NAL_STAP_A, NAL_FU_A = 5, 24, 28


class H264Depacketizer:
    """RTP payloads of one frame in, Annex B NAL units out (RFC 6184, packetization-mode 1).

    ``push`` returns the bytes the payload contributes and whether it could start a frame (not a
    FU-A continuation). A FU-A whose start fragment was lost yields nothing until the next start.
    ``idr``: whether a NAL unit pushed since the last ``reset`` is an IDR slice, read from each unit's
    header as it is taken: a complete access unit with one is one a decoder can start at (a keyframe).
    """

    def __init__(self) -> None:
        self._in_fu = False
        self.idr = False

    def reset(self) -> None:
        self._in_fu = False
        self.idr = False

    def push(self, payload: bytes) -> tuple[bytes, bool]:
        if not payload:
            raise ValueError("empty H.264 payload")
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self._in_fu = False
            self.idr = self.idr or kind == NAL_IDR
            return START_CODE + payload, True
        if kind == NAL_STAP_A:
            self._in_fu = False
            out, i = [], 1
            while i + 2 <= len(payload):
                size = int.from_bytes(payload[i:i + 2], "big")
                i += 2
                if size == 0 or i + size > len(payload):
                    raise ValueError("truncated STAP-A")
                self.idr = self.idr or payload[i] & 0x1F == NAL_IDR
                out.append(START_CODE + payload[i:i + size])
                i += size
            return b"".join(out), True
        if kind == NAL_FU_A:
            if len(payload) < 3:
                raise ValueError("truncated FU-A")
            start, end = bool(payload[1] & 0x80), bool(payload[1] & 0x40)
            if start:
                self._in_fu = not end
                self.idr = self.idr or payload[1] & 0x1F == NAL_IDR
                header = bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
                return START_CODE + header + payload[2:], True
            if not self._in_fu:
                raise ValueError("FU-A fragment without its start")
            if end:
                self._in_fu = False
            return payload[2:], False
        raise ValueError(f"unsupported H.264 packet type {kind}")


@dataclass(slots=True)
class TapFrame:
    """One reassembled encoded frame."""

    timestamp: int        # RTP timestamp, unwrapped (still carries the sender's random origin)
    first_arrival: float  # time.monotonic() of its first packet (when the event loop handled it)
    arrival: float        # time.monotonic() of its last packet (marker bit): when it became decodable
    data: bytes
    packets: int
    keyframe: bool
    complete: bool        # no packet of it was missing
    exact: bool = False   # ``arrival`` is when the last packet reached the socket (fleet.sockstamp), not when
                          # the tester's event loop handled it (then late by any stall of that loop)


class _StarvedQueue:
    """Stands in for aiortc's decoder queue: frames are dropped, the stop sentinel goes through."""

    def __init__(self) -> None:
        self._q: queue.Queue[Any] = queue.Queue()
        self.dropped = 0

    def put(self, item: Any) -> None:
        if item is None:
            self._q.put(None)
        else:
            self.dropped += 1

    def get(self) -> Any:
        return self._q.get()


class TapCore:
    """The frame tap's reassembly: one source's VP8 or H.264 RTP packets in (the first packet's SSRC is the one
    taken), frames out on the marker bit, handed to ``finish(timestamp, first_arrival, arrival, data, packets,
    keyframe, complete, exact)``. ``fleet._rtpnative.Tap`` is its native twin (``tap_core`` picks), judged
    against it packet for packet in tests/test_tap_native.py."""

    def __init__(self, finish: Callable[..., Any]) -> None:
        self.finish = finish
        self.packets = 0
        self.bytes = 0
        self.codec = 0                      # the last packet's (TAP_CODECS), 0 before any
        self.ssrc: int | None = None
        self.first_seq: int | None = None
        self.seq_unwrapped: int | None = None
        self._last_ts: int | None = None
        self._cur_ts: int | None = None
        self._cur_parts: list[bytes] = []
        self._cur_first = 0.0
        self._cur_last = 0.0
        self._cur_exact = False           # whether _cur_last is a socket's stamp
        self._cur_count = 0
        self._cur_next_seq: int | None = None
        self._cur_ok = True
        self._expect: int | None = None   # the sequence number after the last packet taken, across frames
        self._ended_on_marker = True      # the frame before ended on its marker (not cut by a new timestamp)
        self._h264 = H264Depacketizer()

    def packet(self, codec: int, ssrc: int, seq: int, timestamp: int, marker: bool, payload: bytes, now: float,
               exact: bool) -> None:
        """One packet of ``codec`` (``CODEC_VP8`` or ``CODEC_H264``), arrived at ``now``."""
        if codec not in (CODEC_VP8, CODEC_H264):
            raise ValueError(f"codec must be {CODEC_VP8} (VP8) or {CODEC_H264} (H.264), not {codec}")
        self.codec = codec
        if self.ssrc is None:
            self.ssrc = ssrc
        elif ssrc != self.ssrc:
            return
        self.packets += 1
        self.bytes += len(payload)
        if self.seq_unwrapped is None:
            self.seq_unwrapped = self.first_seq = seq
        else:
            delta = (seq - self.seq_unwrapped) & 0xFFFF
            if delta < 0x8000:
                self.seq_unwrapped += delta
            else:
                return  # late or duplicate: counted as received, not reassembled
        ts = unwrap32(self._last_ts, timestamp)
        self._last_ts = ts
        if self._cur_ts is not None and ts != self._cur_ts:
            self._finish(complete=False, now=self._cur_last)  # the previous frame lost its last packet
            self._ended_on_marker = False
        try:
            if codec == CODEC_VP8:
                descriptor, data = VpxPayloadDescriptor.parse(payload)
                starts = bool(descriptor.partition_start and descriptor.partition_id == 0)
            else:
                data, starts = self._h264.push(payload)
            unreadable = False
        except ValueError:  # e.g. a FU-A without its start: the frame lacks a packet, and still ends on its marker
            data, starts, unreadable = b"", False, True
        if self._cur_ts is None:
            self._cur_ts, self._cur_first, self._cur_parts, self._cur_count = ts, now, [], 0
            # H.264: packets missing just before this one were this frame's head (a unit that starts an access
            # unit cannot be told from one inside it), unless the frame before was cut (it lost its marker
            # packet) and only that one is missing. VP8's first packet says it is one (S=1, partition 0).
            gap = 0 if self._expect is None or codec == CODEC_VP8 else (seq - self._expect) & 0xFFFF
            self._cur_ok = starts and (gap == 0 or (gap == 1 and not self._ended_on_marker))
            self._cur_next_seq = seq
        if unreadable or (self._cur_next_seq is not None and seq != self._cur_next_seq):
            self._cur_ok = False
        self._cur_next_seq = self._expect = (seq + 1) & 0xFFFF
        self._cur_parts.append(data)
        self._cur_count += 1
        self._cur_last, self._cur_exact = now, exact
        if marker:
            self._finish(complete=self._cur_ok, now=now)
            self._ended_on_marker = True

    def _finish(self, complete: bool, now: float) -> None:
        data = b"".join(self._cur_parts)
        idr = self._h264.idr
        self._h264.reset()  # whatever the codec now: an H.264 frame cut by another codec's packet leaves nothing behind
        key = complete and (idr if self.codec == CODEC_H264 else vp8_is_keyframe(data))
        timestamp, first, count, exact = self._cur_ts or 0, self._cur_first, self._cur_count, self._cur_exact
        self._cur_ts = None
        self._cur_parts = []
        self._cur_next_seq = None
        self.finish(timestamp, first, now, data, count, key, complete, exact)


def tap_core(finish: Callable[..., Any]) -> Any:
    """The native reassembly (``fleet._rtpnative.Tap``) where the per-packet work is native
    (``fleet.srtpcalls.native_enabled``), else ``TapCore``."""
    return native_tap(finish) or TapCore(finish)


class FrameTap:
    """Sees every RTP packet of one receiver and reassembles VP8 or H.264 frames on the marker bit."""

    def __init__(self, receiver: RTCRtpReceiver, on_frame: Callable[[TapFrame], None], decode: bool = False,
                 bandwidth_feedback: bool = True) -> None:
        self.on_frame = on_frame
        self.receiver = receiver
        self.unsupported: str | None = None
        self._kinds = PayloadKinds(receiver)
        self.core = tap_core(self._frame)
        if not decode:
            starve_decoder(receiver, _StarvedQueue())  # before receive() starts the decoder thread
        if not bandwidth_feedback:
            drop_bandwidth_estimator(receiver)
        self._original = tap_rtp(receiver, self._handle)
        # nothing decoded by aiortc and no bandwidth estimate: its handler would assemble frames only to drop them
        self._lean = lean_receive(receiver, self.packet, self.core) if not decode and not bandwidth_feedback else None

    async def _handle(self, packet: Any, arrival_time_ms: int) -> None:
        lean = self._lean
        at = lean.arrival(packet) if lean is not None else None  # stamped at the socket, held for aiortc's path
        self.packet(packet, time.monotonic() if at is None else at, at is not None)
        if lean is not None:
            await lean(packet)
        else:
            await self._original(packet, arrival_time_ms)

    @property
    def codec(self) -> str | None:
        """"VP8" or "H264", once a packet of it arrived (the last one's)."""
        return CODEC_NAMES.get(self.core.codec)

    @property
    def ssrc(self) -> int | None:
        return self.core.ssrc  # type: ignore[no-any-return]

    @property
    def packets(self) -> int:
        return self.core.packets  # type: ignore[no-any-return]

    @property
    def bytes(self) -> int:
        return self.core.bytes  # type: ignore[no-any-return]

    @property
    def packets_expected(self) -> int:
        first, last = self.core.first_seq, self.core.seq_unwrapped
        return 0 if first is None or last is None else last - first + 1

    @property
    def packets_lost(self) -> int:
        return max(0, self.packets_expected - self.packets)

    def packet(self, packet: Any, now: float, exact: bool = False) -> None:
        kind = self._kinds[packet.payload_type]
        if kind is None:
            return  # retransmissions are left to aiortc
        codec = TAP_CODECS.get(kind)
        if codec is None:
            self.unsupported = kind
            return
        self.core.packet(codec, packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker, packet.payload,
                         now, exact)

    def _frame(self, timestamp: int, first: float, arrival: float, data: builtins.bytes, packets: int, keyframe: bool,
               complete: bool, exact: bool) -> None:
        self.on_frame(TapFrame(timestamp, first, arrival, data, packets, keyframe, complete, exact))
