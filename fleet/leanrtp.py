"""The probe's cheaper RTP data path, under aiortc's peer connection: the same packets on the wire.

aiortc builds an ``RtpPacket`` per packet sent (its header extensions set one by one, two clock reads
through ``datetime``, a serialization, three coroutines down to the socket) and, per packet received, a
queue hop, the DTLS transport's loop, a parse with every header extension, then a depayloader and a jitter
buffer whose frames the probe throws away (its decoder is starved: ``fleet.rtp``). Measured, that is most of
a probe session's CPU. ``lean_sender`` and ``lean_receive`` keep the duties the far end relies on (the same
video packets and header extensions; sender reports; NACKs answered, with RTX when negotiated; receiver
reports and NACKs sent) and drop the rest. Signalling, ICE, DTLS, SRTP keys and RTCP stay aiortc's. Where
the C extension was built (``fleet.srtpcalls.native_enabled``), a frame's packets are built, protected and sent in one
native call (one ``sendmmsg``), and a received media packet is unprotected, parsed, counted for the receiver's
reports and NACKs (``fleet.duties``) and reassembled by the frame tap (``fleet._rtpnative.Tap``) in one; the rest
stays here.

Differences a far end could see, all on paths the probe does not take or does not need: the sender is for
video (no audio-level extension); the DTLS transport's own byte and packet counters (its ``getStats``)
leave out the media sent and received here; and aiortc's jitter buffer would send a keyframe request (PLI)
when a hole stayed unrepaired for its whole 512-packet buffer (about 6 s of a probe's stream) or the
sequence jumped back by 100 or more; the lean receiver sends none then: the probe asks for a keyframe when
a decode window needs one, and a gateway that re-encodes its output (go-livepeer) starts a GOP every 2 s.
A media datagram longer than SRTP's 1500-byte buffer is dropped here; aiortc would close its DTLS transport.

The private attributes used here are checked on import by ``fleet.webrtc`` (``check_private_api``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from struct import pack
from typing import Any, NamedTuple

from aiortc import RTCRtpReceiver, RTCRtpSender, clock
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, RtpPacket, wrap_rtx
from aioice.turn import TurnTransport

from fleet.duties import NativeNack, NativeStreamStatistics, nack_add, receiver_duties
from fleet.media import ClipPayloads, PacketTrack, clip_payloads
from fleet.sockstamp import arrival_clock
from fleet.srtpcalls import RTP_HEADER as _RTP_HEADER
from fleet.srtpcalls import MARKER, NACK_DUE, TAP_CODECS, RtpView, SrtpCalls, is_native_tap, parse_rtp, srtp_calls
from fleet.webrtc import PayloadKinds  # its import also checks the private API used here

__all__ = ["LeanReceive", "RtpView", "lean_receive", "lean_sender", "parse_rtp"]

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
    negotiated). Sender reports read the same counters, updated once per frame."""
    lean = _LeanSender(sender)
    sender._run_rtp = lean.run  # type: ignore[method-assign]
    sender._retransmit = lean.retransmit  # type: ignore[method-assign]


_P = "_RTCRtpSender__"  # the sender's private attributes


class _LeanSender:
    def __init__(self, sender: RTCRtpSender) -> None:
        self.sender = sender
        self.history: dict[int, bytes] = getattr(sender, _P + "rtp_history")
        self.extensions = getattr(sender, _P + "rtp_header_extensions_map")
        self.seq = random.randint(0, 0xFFFF)
        self.origin = random.getrandbits(32)
        self.block: tuple[str | None, int, bytes, bytes, bool] | None = None  # (mid, _extension_block(mid))
        self.srtp: SrtpCalls | None = None

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
        per frame (its packets leave in one loop turn)."""
        dtls = self.sender.transport
        pair = dtls.transport._connection._nominated.get(1)
        if dtls.state != "connected" or pair is None:
            raise ConnectionError("cannot send RTP, not connected")
        self.srtp = srtp = srtp_calls(self.srtp, dtls._tx_srtp)
        assert srtp is not None  # keyed once DTLS is connected
        transport: Any = pair.protocol.transport
        fd = None
        if srtp.native and not isinstance(transport, TurnTransport) and not transport.is_closing() \
                and not transport.get_write_buffer_size():
            sock = transport.get_extra_info("socket")
            fd = sock.fileno() if sock is not None else None
        return srtp, transport, pair.remote_addr, fd

    def frame(self, payloads: Sequence[bytes], rtp_timestamp: int, payload_type: int) -> None:
        """One frame's packets out, and the counters sender reports read."""
        s = self.sender
        timestamp = (self.origin + rtp_timestamp) & 0xFFFFFFFF
        mid = getattr(s, _P + "mid")
        if self.block is None or self.block[0] != mid:
            self.block = (mid, *self._extension_block(mid))
        _, head0, before, after, timed = self.block
        ext_block = before + ((_ntp_now() >> 14) & 0xFFFFFF).to_bytes(3, "big") + after if timed else before
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
                setattr(s, _P + "ntp_timestamp", _ntp_now())
                setattr(s, _P + "rtp_timestamp", timestamp)
                setattr(s, _P + "octet_count", getattr(s, _P + "octet_count") + octets)
                setattr(s, _P + "packet_count", getattr(s, _P + "packet_count") + sent)

    def _picture_id(self, codec: Any) -> int:
        """VP8's next picture ID, from the sender's own encoder (made as aiortc makes it, with a random first
        ID), which counts on: a track that aiortc packs later goes on from it. 0 for H.264 (unused)."""
        encoder = getattr(self.sender, _P + "encoder")
        if encoder is None:
            encoder = get_encoder(codec)
            setattr(self.sender, _P + "encoder", encoder)
        if not isinstance(encoder, Vp8Encoder):
            return 0
        picture_id = encoder.picture_id
        encoder.picture_id = (picture_id + 1) % (1 << 15)
        return picture_id

    async def run(self, codec: Any) -> None:
        """aiortc's ``_run_rtp``: frames from the track until it ends or the sender stops; the exit signalled."""
        s = self.sender
        getattr(s, _P + "rtp_started").set()
        name = codec.name.lower()
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
                _, clip, payloads = packed
                if clip is not None and payloads is not None:
                    # the clip's frames packetized once, what aiortc's pack would give (``ClipPayloads``)
                    index, pts = await clip.next_frame()
                    if s._enabled:
                        self.frame(payloads.frame(index, self._picture_id(codec)), pts, codec.payloadType)
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


def _skip_stun(connection: Any, component: int, data_received: Callable[[bytes, int, float | None], None]) -> bool:
    """Hand the nominated pair's datagrams whose first byte says RTP or RTCP (128-191, RFC 7983 section 7)
    straight to ``data_received``, without aioice's attempt to parse each as STUN first (a STUN message's first
    byte is 0-3: the attempt fails for every one); False while no pair is nominated. A datagram whose second
    byte has its top bit set (an RTP packet with the marker bit, a frame's last, which times the frame; or RTCP)
    comes with when it reached the socket (``fleet.sockstamp``, whose stamping starts here; None where the
    kernel cannot tell); the others with None (asking costs a system call, 1 µs, per packet)."""
    pair = connection._nominated.get(component)
    if pair is None:
        return False
    parse_first = pair.protocol.datagram_received
    arrival = arrival_clock(pair.protocol.transport)

    def datagram_received(data: bytes, addr: Any) -> None:
        if data and 127 < data[0] < 192:
            data_received(data, component, arrival() if arrival is not None and len(data) > 1 and data[1] & 0x80 else None)
        else:
            parse_first(data, addr)  # STUN (consent checks) and DTLS

    pair.protocol.datagram_received = datagram_received
    return True


class _Sequence(NamedTuple):
    """What the NACK generator reads of a packet."""

    sequence_number: int


_R = "_RTCRtpReceiver__"
HELD_STAMPS = 1024  # stamps of packets left to aiortc's path, kept until its handler asks (a handful at a time)


def lean_receive(receiver: RTCRtpReceiver, on_packet: Callable[[Any, float, bool], None], core: Any = None) -> LeanReceive:
    """The probe's receive path for a receiver aiortc decodes nothing for (a starved decoder, no bandwidth
    estimate): its depayloader and jitter buffer, whose frames would be thrown away, are skipped; every media
    packet is taken from the ICE connection as it arrives, SRTP-unprotected (``SrtpCalls``) and handed to
    ``on_packet(packet, arrival, exact)`` at once, without the queue, the DTLS transport's loop and the
    RtpPacket aiortc would build. ``arrival`` is, for a frame's last packet (the marker bit), when it reached
    the socket (``exact``) on a kernel that tells, else ``time.monotonic()``. The receiver still counts every
    packet for its receiver reports and NACKs missing ones (the module's notes say what differs). From the
    first datagram after ICE nominated a pair (the DTLS handshake's, before any media), the pair's RTP and
    RTCP come here, frames' last packets stamped, without aioice's STUN attempt (``_skip_stun``).

    The connection must carry this receiver's media alone (the probe's egress connection has one
    transceiver, never bundled): the first media packet's SSRC is the one taken; packets of any other, and
    those that are not the receiver's media (DTLS, RTCP, retransmissions, other payload types), take aiortc's
    own path (before SRTP is keyed aiortc has not set the receiver's codecs yet, so every packet does), as do
    this SSRC's packets that arrive while older data waits in aiortc's queue (kept in order behind it): their
    stamps are held for ``LeanReceive.arrival``. The object returned is what ``tap_rtp``'s handler awaits for
    the packets of aiortc's path. With ``core``, a native frame tap (``fleet._rtpnative.Tap``: what ``on_packet``
    hands its packets to), a VP8 or H.264 packet goes to it in the same call that unprotects it, without
    ``on_packet``, where the session's SRTP is native too."""
    return LeanReceive(receiver, on_packet, core)


class LeanReceive:
    """``lean_receive``'s path for one receiver; called (awaited) with each packet of aiortc's path."""

    def __init__(self, receiver: RTCRtpReceiver, on_packet: Callable[[Any, float, bool], None], core: Any = None) -> None:
        self.receiver, self.on_packet = receiver, on_packet
        nack = getattr(receiver, _R + "nack_generator")
        # a native tap takes its packets with their duties, on its own state (fleet.duties)
        self.core = core if is_native_tap(core) and nack is not None else None
        if self.core is not None:
            setattr(receiver, _R + "nack_generator", NativeNack(self.core, taken_over=nack))
        self.duties = receiver_duties(receiver)
        self.generator = getattr(receiver, _R + "nack_generator")
        self.active: dict[int, Any] = getattr(receiver, _R + "active_ssrc")
        self.streams: dict[int, Any] = getattr(receiver, _R + "remote_streams")
        self.stats: NativeStreamStatistics | None = None  # the taken SSRC's, once the native tap counts it
        self.dtls = receiver.transport
        self.connection = self.dtls.transport._connection
        self.queued, self.original = self.connection._queue, self.connection.data_received
        self.nacks: set[asyncio.Task[None]] = set()
        self.ssrc: int | None = None      # the SSRC this path takes
        self.kinds = PayloadKinds(receiver)  # payload type -> its media codec (None: RTX or unknown)
        self.direct = False               # whether the pair's datagrams come straight here
        self.srtp: SrtpCalls | None = None
        self.held: dict[int, float] = {}  # sequence number -> arrival, of this SSRC's packets left to aiortc
        self.taken = 0                    # packets this path took
        self.connection.data_received = self.data_received  # type: ignore[method-assign]

    def data_received(self, data: bytes, component: int, arrival: float | None = None) -> None:
        if not self.direct:
            self.direct = _skip_stun(self.connection, component, self.data_received)
        if len(data) < 12 or not 127 < data[0] < 192 or 192 <= data[1] <= 223:
            self.original(data, component)  # DTLS, RTCP
            return
        pt, ssrc = data[1] & 0x7F, int.from_bytes(data[8:12], "big")  # the RTP header is not encrypted
        kind = self.kinds[pt]
        if kind is None or (self.ssrc is not None and ssrc != self.ssrc):
            self.original(data, component)
            return
        self.ssrc = ssrc
        srtp = self.srtp
        if srtp is None or srtp.session is not self.dtls._rx_srtp:
            srtp = self.srtp = srtp_calls(srtp, self.dtls._rx_srtp)
        if srtp is None or not self.queued.empty():  # older data still queued (or, defensively, SRTP not keyed)
            self.hold(int.from_bytes(data[2:4], "big"), arrival)
            self.original(data, component)
            return
        if self.core is not None and self.core.ssrc not in (None, ssrc):  # the tap took another source first
            self.core = None
        codec = TAP_CODECS.get(kind) if self.core is not None and srtp.native and self.receiver._enabled else None
        if codec is not None:
            self.take(srtp, data, codec, pt, ssrc, arrival)
            return
        packet = srtp.read(data)  # an SRTP failure drops the packet, as aiortc; so does one longer than SRTP's buffer
        if packet is None:
            return
        self.taken += 1
        lost = self.duties(packet, media=True)  # first, as aiortc orders them: a frame's consumer that raises leaves it counted
        if lost is not None:
            self.nack(lost.ssrc)
        self.on_packet(packet, time.monotonic() if arrival is None else arrival, arrival is not None)

    def take(self, srtp: SrtpCalls, data: bytes, codec: int, pt: int, ssrc: int, arrival: float | None) -> None:
        """A media packet unprotected, parsed, reassembled and counted for reports in one native call (the
        NACK generator moved on there too for the next packet in order with none missing)."""
        stream = self.streams.get(ssrc)
        if self.stats is None or (stream is not None and stream is not self.stats):
            # the tap's statistics, carrying on what aiortc's path counted for the source (if it did); in aiortc's
            # streams at once if so, else once a packet is counted (its reports read a stream with one)
            clockrate = getattr(self.receiver, _R + "codecs")[pt].clockRate
            self.stats = NativeStreamStatistics(self.core, clockrate, stream)
            if stream is not None:
                self.streams[ssrc] = self.stats
        done = srtp.take(self.core, data, codec, arrival)
        if not done:  # dropped, as ``read`` drops
            return
        self.taken += 1
        if stream is not self.stats:  # its first packet counted: aiortc's reports read it from here on
            self.streams[ssrc] = self.stats
            self.active[ssrc] = clock.current_datetime()
        elif done & MARKER:
            self.active[ssrc] = clock.current_datetime()
        if done & NACK_DUE and nack_add(self.generator, _Sequence(int.from_bytes(data[2:4], "big"))):
            self.nack(ssrc)

    def nack(self, ssrc: int) -> None:
        task = asyncio.ensure_future(self.receiver._send_rtcp_nack(ssrc, sorted(self.generator.missing)))
        self.nacks.add(task)
        task.add_done_callback(self.nacks.discard)

    def hold(self, seq: int, arrival: float | None) -> None:
        """Keep the stamp of a packet of this SSRC's left to aiortc's path (none known: forget an older one)."""
        if arrival is None:
            self.held.pop(seq, None)
            return
        if len(self.held) >= HELD_STAMPS:  # packets aiortc dropped (an SRTP replay or failed check) never ask
            self.held.clear()
        self.held[seq] = arrival

    def arrival(self, packet: Any) -> float | None:
        """When a packet of aiortc's path reached the socket, if it is this SSRC's and was stamped."""
        return self.held.pop(packet.sequence_number, None) if packet.ssrc == self.ssrc else None

    async def __call__(self, packet: Any) -> None:
        lost = self.duties(packet)
        if lost is not None:
            await self.receiver._send_rtcp_nack(lost.ssrc, sorted(self.generator.missing))
