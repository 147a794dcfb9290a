"""The probe's cheaper RTP data path, under aiortc's peer connection: the same packets on the wire.

aiortc builds an ``RtpPacket`` per packet sent (its header extensions set one by one, two clock reads
through ``datetime``, a serialization, three coroutines down to the socket) and, per packet received, a
queue hop, the DTLS transport's loop, a parse with every header extension, then a depayloader and a jitter
buffer whose frames the probe throws away (its decoder is starved: ``fleet.rtp``). Measured, that is most of
a probe session's CPU. ``lean_sender`` and ``lean_receive`` keep the duties the far end relies on (the same
video packets and header extensions; sender reports; NACKs answered, with RTX when negotiated; receiver
reports and NACKs sent) and drop the rest. Signalling, ICE, DTLS, SRTP keys and RTCP stay aiortc's (its
RTCP handlers called as a datagram arrives, without its queue: ``fleet.leanice``). Where
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
The lean sender's reports pair a frame's RTP timestamp with the NTP time read as its packets leave, where
aiortc reads it after each packet: microseconds earlier on the native path (``fleet.leansend``).
A media datagram longer than SRTP's 1500-byte buffer is dropped here; aiortc would close its DTLS transport.

The private attributes used here are checked on import by ``fleet.webrtc`` (``check_private_api``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from aiortc import RTCRtpReceiver, clock

from fleet.duties import NativeNack, NativeStreamStatistics, nack_add, receiver_duties
from fleet.leanice import is_srtcp, rtcp_now
from fleet.leanice import skip_stun as _skip_stun
from fleet.leansend import lean_sender
from fleet.srtpcalls import MARKER, NACK_DUE, TAKEN, TAP_CODECS, RtpView, SrtpCalls, is_native_tap, parse_rtp, srtp_calls
from fleet.webrtc import PayloadKinds  # its import also checks the private API used here

__all__ = ["LeanReceive", "RtpView", "lean_receive", "lean_sender", "parse_rtp"]


class _Fast(NamedTuple):
    """What the native tap's first counted packet fixed for the rest of its source's: no other payload type,
    SSRC (the header's bytes) or codec goes to the tap, nor a packet of another SRTP session."""

    pt: int
    ssrc_bytes: bytes
    ssrc: int
    srtp: SrtpCalls
    codec: int
    take: Callable[[bytes, int, float | None], int]  # ``srtp.take`` on the tap, one native call (``SrtpCalls.taker``)


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
    those that are not the receiver's media (DTLS, retransmissions, other payload types), take aiortc's
    own path (before SRTP is keyed aiortc has not set the receiver's codecs yet, so every packet does), as do
    this SSRC's packets that arrive while older data waits in aiortc's queue (kept in order behind it): the
    stamps of these, of any RTP before the first packet taken (media that beat aiortc's set-up of the
    receiver's codecs among them) and of the taken SSRC's of a type not known, are held for
    ``LeanReceive.arrival`` (those aiortc drops never ask: at most ``HELD_STAMPS`` are kept). The
    object returned is what ``tap_rtp``'s handler awaits for the packets of aiortc's path. RTCP goes to
    aiortc's handlers at once (``fleet.leanice.rtcp_now``) unless older data waits. With ``core``, a native
    frame tap (``fleet._rtpnative.Tap``: what ``on_packet`` hands its packets to), a VP8 or H.264 packet
    goes to it in the same call that unprotects it, without ``on_packet``, where the session's SRTP is
    native too."""
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
        self.held: dict[tuple[int, int], float] = {}  # (SSRC, sequence number) -> arrival, of packets left to aiortc
        self.taken = 0                    # packets this path took
        self.fast: _Fast | None = None    # set once the native tap counted a packet of the source it takes
        self.connection.data_received = self.data_received  # type: ignore[method-assign]

    def data_received(self, data: bytes, component: int, arrival: float | None = None) -> None:
        if not self.direct:
            self.direct = _skip_stun(self.connection, component, self.data_received)
        fast = self.fast
        if (fast is not None and len(data) >= 12 and 127 < data[0] < 192 and data[1] & 0x7F == fast.pt
                and data[8:12] == fast.ssrc_bytes and fast.srtp.session is self.dtls._rx_srtp and self.queued.empty()
                and self.receiver._enabled):  # the source the native tap takes, as the slow path below would
            done = fast.take(data, fast.codec, arrival)
            if done == TAKEN:  # most packets: not a frame's last, the next in order with none missing
                self.taken += 1
            else:
                self.counted(done, data, fast.ssrc)
            return
        if len(data) < 12 or not 127 < data[0] < 192 or 192 <= data[1] <= 223:
            if not (is_srtcp(data) and self.queued.empty() and rtcp_now(self.dtls, data)):
                self.original(data, component)  # DTLS; RTCP while older data waits or before SRTP is keyed
            return
        pt, ssrc = data[1] & 0x7F, int.from_bytes(data[8:12], "big")  # the RTP header is not encrypted
        kind = self.kinds[pt]
        if kind is None or (self.ssrc is not None and ssrc != self.ssrc):
            if self.ssrc in (None, ssrc):  # before the first taken (media that beat aiortc's set-up among them)
                self.hold(ssrc, int.from_bytes(data[2:4], "big"), arrival)
            self.original(data, component)
            return
        self.ssrc = ssrc
        srtp = self.srtp
        if srtp is None or srtp.session is not self.dtls._rx_srtp:
            srtp = self.srtp = srtp_calls(srtp, self.dtls._rx_srtp)
        if srtp is None or not self.queued.empty():  # older data still queued (or, defensively, SRTP not keyed)
            self.hold(ssrc, int.from_bytes(data[2:4], "big"), arrival)
            self.original(data, component)
            return
        if self.core is not None and self.core.ssrc not in (None, ssrc):  # the tap took another source first
            self.core = self.fast = None
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
        if done and stream is not self.stats:  # its first packet counted: aiortc's reports read it from here on
            self.streams[ssrc] = self.stats
            self.active[ssrc] = clock.current_datetime()
        if done and not 64 <= pt <= 95:  # what this packet fixed, for the next ones (``_Fast``); 64-95 would take
            self.fast = _Fast(pt, data[8:12], ssrc, srtp, codec, srtp.taker(self.core))  # the RTCP types with the marker bit (RFC 5761)
        self.counted(done, data, ssrc)

    def counted(self, done: int, data: bytes, ssrc: int) -> None:
        """What is left of a native take in Python: the source active at a frame's end, and the NACK generator's
        turn for a packet out of order or after a gap (``NACK_DUE``)."""
        if not done:  # dropped, as ``read`` drops
            return
        self.taken += 1
        if done & MARKER:
            self.active[ssrc] = clock.current_datetime()
        if done & NACK_DUE and nack_add(self.generator, _Sequence(int.from_bytes(data[2:4], "big"))):
            self.nack(ssrc)

    def nack(self, ssrc: int) -> None:
        task = asyncio.ensure_future(self.receiver._send_rtcp_nack(ssrc, sorted(self.generator.missing)))
        self.nacks.add(task)
        task.add_done_callback(self.nacks.discard)

    def hold(self, ssrc: int, seq: int, arrival: float | None) -> None:
        """Keep the stamp of a packet left to aiortc's path (none known: forget an older one)."""
        if arrival is None:
            self.held.pop((ssrc, seq), None)
            return
        if len(self.held) >= HELD_STAMPS:  # packets aiortc dropped (an SRTP replay or failed check) never ask
            self.held.clear()
        self.held[ssrc, seq] = arrival

    def arrival(self, packet: Any) -> float | None:
        """When a packet of aiortc's path reached the socket, if it was stamped."""
        return self.held.pop((packet.ssrc, packet.sequence_number), None)

    async def __call__(self, packet: Any) -> None:
        lost = self.duties(packet)
        if lost is not None:
            await self.receiver._send_rtcp_nack(lost.ssrc, sorted(self.generator.missing))
