"""The probe's lean RTP sender, under aiortc's RTCRtpSender: the same packets on the wire, for less CPU.

What it keeps and drops of aiortc's send path, and why, is ``fleet.leanrtp``'s to say (the two halves of one
data path); ``lean_sender`` is here, with the route a frame's packets take and the counters sender reports read.
The private attributes used here are checked on import by ``fleet.webrtc`` (``check_private_api``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from struct import pack
from typing import Any, NamedTuple

from aiortc import RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, RtpPacket, wrap_rtx
from aioice.turn import TurnTransport

import fleet.webrtc  # noqa: F401 - its import checks the private API used here
from fleet.leanice import lean_rtcp
from fleet.media import ClipPayloads, PacketTrack, clip_payloads
from fleet.srtpcalls import RTP_HEADER as _RTP_HEADER
from fleet.srtpcalls import SrtpCalls, srtp_calls

__all__ = ["lean_sender"]

_NTP_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)


def _ntp_now() -> int:
    """The NTP time now, 32.32 fixed point (aiortc's clock.current_ntp_time, read without datetime)."""
    return int((time.time() + _NTP_OFFSET) * (1 << 32))


def lean_sender(sender: RTCRtpSender) -> None:
    """Give ``sender`` (video; its track hands out pre-encoded ``av.Packet``s) a send loop that costs less per packet
    than aiortc's, and the retransmission that goes with it. Call before negotiation starts the sender.

    On the wire nothing changes: the same payloads (a ``PacketTrack``'s clip packetized once per process by
    aiortc's own packetizers, ``fleet.media.ClipPayloads``; VP8's picture ID counted by the sender's encoder), the
    same RTP header, the same header extensions (mid, abs-send-time) serialized by aiortc's own extension map
    once per mid, abs-send-time filled in per frame (a frame's packets leave in one loop iteration; its unit is
    3.8 µs), the same sequence numbers and timestamps. The history kept for
    NACKs holds each packet's bytes; a retransmission parses them back and goes out as aiortc's would (RTX when
    negotiated). Sender reports read the same counters, updated once per frame; their NTP time is the one
    abs-send-time took, read as the frame's packets leave (aiortc reads it after each packet: on the native
    path, one call later by microseconds)."""
    lean = _LeanSender(sender)
    sender._run_rtp = lean.run  # type: ignore[method-assign]
    sender._retransmit = lean.retransmit  # type: ignore[method-assign]


_P = "_RTCRtpSender__"  # the sender's private attributes
_MID, _NTP_TS, _RTP_TS, _OCTETS, _PACKETS = (_P + a for a in ("mid", "ntp_timestamp", "rtp_timestamp", "octet_count",
                                                              "packet_count"))  # read or set per frame


class _Route(NamedTuple):
    """What a nominated pair and its SRTP session fix of the lean sender's route."""

    pair: Any
    srtp: SrtpCalls
    transport: Any
    address: Any
    fd: int | None  # the transport's own socket, where the native send may write to it


def _route(pair: Any, srtp: SrtpCalls | None) -> _Route:
    assert srtp is not None  # keyed once DTLS is connected
    transport: Any = pair.protocol.transport
    fd = None
    if srtp.native and not isinstance(transport, TurnTransport) and not transport.is_closing():  # closing: for good
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else None
    return _Route(pair, srtp, transport, pair.remote_addr, fd)


class _LeanSender:
    def __init__(self, sender: RTCRtpSender) -> None:
        self.sender = sender
        self.history: dict[int, bytes] = getattr(sender, _P + "rtp_history")
        self.extensions = getattr(sender, _P + "rtp_header_extensions_map")
        self.seq = random.randint(0, 0xFFFF)
        self.origin = random.getrandbits(32)
        self.block: tuple[str | None, int, bytes, bytes, bool] | None = None  # (mid, _extension_block(mid))
        self.routed: _Route | None = None

    def _extension_block(self, mid: str | None) -> tuple[int, bytes, bytes, bool]:
        """The RTP header's first byte and its extension block, serialized once by aiortc's extension map and
        split around abs-send-time's 3 bytes (found as the bytes two serializations of it differ in), which
        ``frame`` fills in per frame: (first byte, block before, block after, whether abs-send-time is in it)."""
        def block(abs_send_time: int) -> bytes:
            values = HeaderExtensions()
            values.mid, values.abs_send_time = mid, abs_send_time
            profile, ext = self.extensions.set(values)
            return pack("!HH", profile, len(ext) >> 2) + ext if ext else b""

        low, high = block(0), block(0xFFFFFF)
        if not low:
            return 0x80, b"", b"", False
        at = [k for k in range(len(low)) if low[k] != high[k]]
        if not at:
            return 0x90, low, b"", False
        if at != [at[0], at[0] + 1, at[0] + 2]:
            raise RuntimeError("aiortc's abs-send-time extension is no longer 3 bytes in one place")
        return 0x90, low[: at[0]], low[at[0] + 3:], True

    def route(self) -> tuple[SrtpCalls, Any, Any, int | None]:
        """SRTP, the nominated ICE pair's transport, its address and, for the native path, the file descriptor
        of the transport's own datagram socket (None: no native path, or a TURN relay, or data already queued
        in the transport): what aiortc's transports go through per packet in three coroutines, resolved once
        per frame (its packets leave in one loop turn); what a pair and its SRTP session fix is kept until
        either changes (``_Route``)."""
        dtls = self.sender.transport
        pair = dtls.transport._connection._nominated.get(1)
        if dtls._state is not State.CONNECTED or pair is None:  # its public state makes a string per read
            raise ConnectionError("cannot send RTP, not connected")
        kept = self.routed
        if kept is None or kept.pair is not pair or kept.srtp.session is not dtls._tx_srtp:
            kept = self.routed = _route(pair, srtp_calls(kept and kept.srtp, dtls._tx_srtp))
        transport, fd = kept.transport, kept.fd
        if fd is not None and (transport.is_closing() or transport.get_write_buffer_size()):
            fd = None
        return kept.srtp, transport, kept.address, fd

    def frame(self, payloads: Sequence[bytes], rtp_timestamp: int, payload_type: int) -> None:
        """One frame's packets out, and the counters sender reports read."""
        s = self.sender
        timestamp = (self.origin + rtp_timestamp) & 0xFFFFFFFF
        mid = getattr(s, _MID)
        if self.block is None or self.block[0] != mid:
            self.block = (mid, *self._extension_block(mid))
        _, head0, before, after, timed = self.block
        ntp = _ntp_now()  # abs-send-time's, and the sender reports' pair with this frame's RTP timestamp
        ext_block = before + ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big") + after if timed else before
        srtp, transport, address, fd = self.route()
        last, octets, sent, seq, ssrc, history = len(payloads) - 1, 0, 0, self.seq, s._ssrc, self.history
        try:
            if fd is not None:  # built, protected and sent in one native call
                sent, octets, unsent, error = srtp.send_frame(fd, address, (head0, payload_type, seq, timestamp, ssrc),
                                                              ext_block, payloads, history, RTP_HISTORY_SIZE)
                self.seq = (seq + sent) & 0xFFFF
                for data in unsent:
                    transport.sendto(data, address)
                if error is not None:
                    raise error
                return
            protect, sendto = srtp.protect, transport.sendto
            for i, payload in enumerate(payloads):
                data = _RTP_HEADER.pack(head0, payload_type | (0x80 if i == last else 0), seq, timestamp, ssrc)
                data += ext_block + payload
                history[seq % RTP_HISTORY_SIZE] = data
                sendto(protect(data), address)
                octets, sent = octets + len(payload), sent + 1
                seq = self.seq = (seq + 1) & 0xFFFF
        finally:  # the packets that left, as aiortc counts them (its reports go on after a failed send)
            if sent:
                setattr(s, _NTP_TS, ntp)
                setattr(s, _RTP_TS, timestamp)
                setattr(s, _OCTETS, getattr(s, _OCTETS) + octets)
                setattr(s, _PACKETS, getattr(s, _PACKETS) + sent)

    def _encoder(self, codec: Any) -> Any:
        """The sender's own encoder, made as aiortc makes it (VP8's with a random first picture ID) if it has
        none yet: a track that aiortc packs later goes on from it."""
        encoder = getattr(self.sender, _P + "encoder")
        if encoder is None:
            encoder = get_encoder(codec)
            setattr(self.sender, _P + "encoder", encoder)
        return encoder

    def _picture_id(self, codec: Any) -> int:
        """VP8's next picture ID, counted on the sender's encoder; 0 for another codec (unused)."""
        encoder = self._encoder(codec)
        if not isinstance(encoder, Vp8Encoder):
            return 0
        picture_id = encoder.picture_id
        encoder.picture_id = (picture_id + 1) % (1 << 15)
        return picture_id

    async def run(self, codec: Any) -> None:
        """aiortc's ``_run_rtp``: frames from the track until it ends or the sender stops; the exit signalled."""
        s = self.sender
        lean_rtcp(s.transport)  # the RTCP coming back (reports, REMB, keyframe requests, NACKs) read as it arrives
        getattr(s, _P + "rtp_started").set()
        name = codec.name.lower()
        vp8 = name == "vp8"  # the one codec whose payloads carry a picture ID the sender counts
        packed: tuple[Any, PacketTrack | None, ClipPayloads | None] = (None, None, None)  # track; as a clip's, its payloads
        try:
            while True:
                track = s.track
                if not track:
                    await asyncio.sleep(0.02)
                    continue
                if track is not packed[0]:
                    clip = track if isinstance(track, PacketTrack) and track.clip.codec == name else None
                    packed = (track, clip, clip_payloads(clip.clip) if clip is not None else None)
                    self._encoder(codec)  # made once a track, not looked up per frame (VP8 counts its ID per frame)
                _, clip, payloads = packed
                if clip is not None and payloads is not None:
                    # the clip's frames packetized once, what aiortc's pack would give (``ClipPayloads``)
                    index, pts = await clip.next_frame()
                    if s._enabled:
                        self.frame(payloads.frame(index, self._picture_id(codec) if vp8 else 0), pts, codec.payloadType)
                    continue
                encoded = await s._next_encoded_frame(codec)
                if encoded is not None:
                    self.frame(encoded.payloads, encoded.timestamp, codec.payloadType)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:  # noqa: BLE001 - as aiortc's loop: the exit must be signalled, or stop() hangs
            logging.getLogger(__name__).warning("RTP send loop failed", exc_info=True)
        if s.track:
            s.track.stop()
            setattr(s, _P + "track", None)
        setattr(s, _P + "encoder", None)
        getattr(s, _P + "rtp_exited").set()

    async def retransmit(self, sequence_number: int) -> None:
        """aiortc's ``_retransmit``: the packet a NACK names, from the history, as RTX when negotiated."""
        s = self.sender
        data = self.history.get(sequence_number % RTP_HISTORY_SIZE)
        if data is None:
            return
        packet = RtpPacket.parse(data, self.extensions)
        if packet.sequence_number != sequence_number:
            return
        rtx_pt = getattr(s, _P + "rtx_payload_type")
        if rtx_pt is not None:
            rtx_seq = getattr(s, _P + "rtx_sequence_number")
            packet = wrap_rtx(packet, payload_type=rtx_pt, sequence_number=rtx_seq, ssrc=s._rtx_ssrc)
            setattr(s, _P + "rtx_sequence_number", (rtx_seq + 1) & 0xFFFF)
        await s.transport._send_rtp(packet.serialize(self.extensions))
