"""The probe's per-packet RTP work in native code (``fleet._rtpnative``, through ``fleet.srtpcalls.SrtpCalls``)
against aiortc's and pylibsrtp's own: a frame's packets as aiortc serializes them and pylibsrtp protects them
on a twin session keyed alike, on the wire of a real loopback socket; a received packet read as aiortc parses
it. The wire tests in test_lean_rtp.py run over real peer connections on both paths.
"""

from __future__ import annotations

import os
import socket
import struct
from types import SimpleNamespace

import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtpPacket
from aioice.turn import TurnTransport
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleet import srtpcalls
from fleet.leansend import _LeanSender
from fleet.srtpcalls import SrtpCalls
from tests.test_lean_rtp import extension_map
from tests.test_lean_rtp import srtp_session as session  # keyed with one fixed key: protection is deterministic

needs_native = pytest.mark.skipif(srtpcalls.NATIVE_UNUSABLE is not None, reason=str(srtpcalls.NATIVE_UNUSABLE))

HISTORY = 128
OUT, IN = pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND


def native(direction: int) -> SrtpCalls:
    calls = SrtpCalls(session(direction))
    calls.native = True
    return calls


def aiortc_packets(pt: int, seq: int, ts: int, ssrc: int, mid: str | None, abs_send_time: int | None,
                   payloads: list[bytes]) -> list[bytes]:
    """A frame as aiortc serializes it: consecutive sequence numbers, the marker on the last packet."""
    out = []
    for i, payload in enumerate(payloads):
        packet = RtpPacket(payload_type=pt, marker=int(i == len(payloads) - 1), sequence_number=(seq + i) & 0xFFFF,
                           timestamp=ts, ssrc=ssrc, payload=payload)
        packet.extensions.mid, packet.extensions.abs_send_time = mid, abs_send_time
        out.append(packet.serialize(extension_map()))
    return out


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(2048)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5.0)


@pytest.fixture(scope="module")
def wire():
    """A datagram socket to send from and one to receive on, over loopback."""
    out, into = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    into.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # a frame of many packets waits whole
    into.bind(("127.0.0.1", 0))
    into.settimeout(5.0)
    out.setblocking(False)
    yield out, into
    out.close()
    into.close()


@needs_native
@settings(max_examples=60, deadline=None)
@example(sizes=[1000] * 70, pt=96, seq=0xFFF0, ts=1, ssrc=2, mid="0", abs_send_time=5)  # three sendmmsg batches, a wrap
@given(sizes=st.lists(st.integers(0, 1200), min_size=1, max_size=40), pt=st.integers(0, 127), seq=st.integers(0, 0xFFFF),
       ts=st.integers(0, 0xFFFFFFFF), ssrc=st.integers(0, 0xFFFFFFFF),
       mid=st.none() | st.text("0123456789abc", min_size=1, max_size=8), abs_send_time=st.none() | st.integers(0, 0xFFFFFF))
def test_a_frame_sent_natively_is_what_aiortc_serializes_and_pylibsrtp_protects(wire, sizes, pt, seq, ts, ssrc, mid,
                                                                                abs_send_time) -> None:
    """Every packet of the frame on the wire, in order, byte for byte the twin's; the history holds the
    unprotected packets under their sequence numbers; the receiving side reads each back as aiortc parses it."""
    out, into = wire
    drain(into)  # what a failed example before this one left
    payloads = [os.urandom(n) for n in sizes]
    truth = aiortc_packets(pt, seq, ts, ssrc, mid, abs_send_time, payloads)
    head0, ext_block = truth[0][0] & 0xF0, truth[0][12:len(truth[0]) - len(payloads[0])]
    ours, twin, reader = native(OUT), session(OUT), native(IN)
    history: dict[int, bytes] = {}
    sent, octets, unsent, error = ours.send_frame(out.fileno(), into.getsockname(), (head0, pt, seq, ts, ssrc), ext_block,
                                                  payloads, history, HISTORY)
    assert (sent, octets, unsent, error) == (len(payloads), sum(sizes), [], None)
    for data in truth:
        got = into.recv(2048)
        assert got == twin.protect(data)
        view, parsed = reader.read(got), RtpPacket.parse(data, extension_map())
        assert view is not None
        assert (view.payload_type, view.marker, view.sequence_number, view.timestamp, view.ssrc, view.payload) == \
            (parsed.payload_type, parsed.marker, parsed.sequence_number, parsed.timestamp, parsed.ssrc, parsed.payload)
    assert history == {(seq + i) % HISTORY: data for i, data in enumerate(truth)}


@needs_native
@pytest.mark.parametrize("fd, host", [(-1, "127.0.0.1"), (None, "localhost")], ids=["no socket (fd -1)", "a name, not an address"])
def test_what_the_socket_did_not_take_is_handed_back_protected(wire, fd, host) -> None:
    """A socket that refuses (here: no socket) or an address inet_pton does not read: every packet is handed
    back protected, for the caller's transport, and counted as protected."""
    out, _ = wire
    payloads = [b"abc", b"defg", b"h"]
    truth = aiortc_packets(96, 0xFFFE, 1, 2, None, None, payloads)
    sent, octets, unsent, error = native(OUT).send_frame(out.fileno() if fd is None else fd, (host, 9), (0x80, 96, 0xFFFE, 1, 2),
                                                         b"", payloads, {}, HISTORY)
    twin = session(OUT)
    assert (sent, octets, error) == (3, 8, None)
    assert unsent == [twin.protect(data) for data in truth]


@needs_native
def test_a_failed_protection_stops_the_frame_there() -> None:
    """libsrtp refuses to protect a sequence number twice (a key stream used twice): the packets before it are
    protected and handed on, the error says libsrtp's reason."""
    ours = native(OUT)
    ours.send_frame(-1, ("127.0.0.1", 9), (0x80, 96, 10, 1, 2), b"", [b"a", b"b", b"c"], {}, HISTORY)  # 10, 11, 12
    sent, octets, unsent, error = ours.send_frame(-1, ("127.0.0.1", 9), (0x80, 96, 8, 1, 2), b"", [b"d", b"ee", b"f"], {}, HISTORY)
    assert (sent, octets, len(unsent)) == (2, 3, 2)
    assert isinstance(error, pylibsrtp.Error) and "replay" in str(error)


@needs_native
def test_a_frame_with_a_packet_too_long_or_not_bytes_is_refused_before_anything_is_kept() -> None:
    ours, history = native(OUT), {}
    longest = srtpcalls._rtpnative.PACKET_MAX - 12 - 8  # as pylibsrtp's: its buffer less SRTP's longest trailer
    assert ours.send_frame(-1, ("127.0.0.1", 9), (0x90, 96, 1, 1, 2), bytes(8), [bytes(longest)], history, HISTORY)[0] == 1
    assert SrtpCalls(session(OUT)).protect(bytes(12 + 8 + longest))  # pylibsrtp's own limit: this one in, one more out
    with pytest.raises(ValueError, match="too long"):
        SrtpCalls(session(OUT)).protect(bytes(12 + 8 + longest + 1))
    history.clear()
    with pytest.raises(ValueError, match="too long for SRTP"):
        ours.send_frame(-1, ("127.0.0.1", 9), (0x90, 96, 2, 1, 2), bytes(8), [b"a", bytes(longest + 1)], history, HISTORY)
    with pytest.raises(TypeError, match="bytes"):
        ours.send_frame(-1, ("127.0.0.1", 9), (0x80, 96, 1, 1, 2), b"", [b"a", "b"], history, HISTORY)  # type: ignore[list-item]
    assert history == {}


@needs_native
def test_a_received_packet_the_native_read_refuses_is_none() -> None:
    """A tampered packet, one too long for SRTP's buffer, garbage, and a packet whose padding claims more than it
    holds (valid SRTP, no valid RTP) all come back None, as the Python path's."""
    tx = session(OUT)
    good = tx.protect(struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"payload")
    padded = tx.protect(struct.pack("!BBHII", 0xA0, 96, 2, 2, 3) + b"\x01\x02\x20")
    for data in (good[:-1] + bytes([good[-1] ^ 1]), bytes(3000), b"\x80" * 20, padded):
        assert native(IN).read(data) is None
    python = SrtpCalls(session(IN))
    python.native = False
    assert python.read(padded) is None
    reader = native(IN)
    view = reader.read(good)
    assert view is not None and (view.sequence_number, view.payload) == (1, b"payload")


def test_the_native_path_is_built_where_ci_requires_it() -> None:
    """CI (``.ci/run`` exports FLEET_REQUIRE_NATIVE=1 where it installs a compiler) must build and use the
    extension: the probe's figures are the native path's."""
    if os.environ.get("FLEET_REQUIRE_NATIVE") != "1":
        pytest.skip("FLEET_REQUIRE_NATIVE is not set")
    assert srtpcalls.NATIVE_UNUSABLE is None, srtpcalls.NATIVE_UNUSABLE


@needs_native
@settings(max_examples=200, deadline=None)
@given(pt=st.integers(0, 127), marker=st.integers(0, 1), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFFFFFF),
       ssrc=st.integers(0, 0xFFFFFFFF), csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
       mid=st.none() | st.text("0123456789abc", min_size=1, max_size=8),
       abs_send_time=st.none() | st.integers(0, 0xFFFFFF), padding=st.integers(0, 255), payload=st.binary(max_size=1000))
def test_a_packet_read_natively_is_what_aiortc_parses(pt, marker, seq, ts, ssrc, csrc, mid, abs_send_time, padding, payload) -> None:
    """CSRCs, header extensions and padding as aiortc serializes them, protected by pylibsrtp: the native read
    gives aiortc's parse of the unprotected packet."""
    packet = RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts, ssrc=ssrc)
    packet.csrc, packet.payload, packet.padding_size = csrc, payload, padding
    packet.extensions.mid, packet.extensions.abs_send_time = mid, abs_send_time
    data = packet.serialize(extension_map())
    truth, view = RtpPacket.parse(data, extension_map()), native(IN).read(session(OUT).protect(data))
    assert view is not None
    assert (view.payload_type, view.marker, view.sequence_number, view.timestamp, view.ssrc, view.payload) == \
        (truth.payload_type, truth.marker, truth.sequence_number, truth.timestamp, truth.ssrc, truth.payload)


@needs_native
def test_a_frame_goes_natively_to_an_ipv6_peer() -> None:
    try:
        out, into = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        into.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with out, into:
        into.settimeout(5.0)
        payloads = [b"one", b"two"]
        result = native(OUT).send_frame(out.fileno(), into.getsockname()[:2], (0x80, 96, 7, 1, 2), b"", payloads, {}, HISTORY)
        assert result == (2, 6, [], None)
        twin = session(OUT)
        assert [into.recv(2048) for _ in payloads] == [twin.protect(d) for d in aiortc_packets(96, 7, 1, 2, None, None, payloads)]


# --- the lean sender's use of it: its route and the transport's share ----------------------------------------

class FakeTransport:
    """A stand-in for aioice's datagram transport (a fake: the route's choice is judged, not the network):
    records what it is asked to send."""

    def __init__(self, fd: int, closing: bool = False, queued: int = 0) -> None:
        self.fd, self.closing, self.queued, self.sent = fd, closing, queued, []

    def sendto(self, data: bytes, address) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.queued

    def get_extra_info(self, name: str):
        return SimpleNamespace(fileno=lambda: self.fd) if name == "socket" else None


def lean_sender_on(transport) -> _LeanSender:
    """A lean sender whose aiortc sender is a stand-in with the private attributes it reads, connected through
    ``transport`` with an SRTP session keyed as ``session``'s."""
    p = "_RTCRtpSender__"
    sender = SimpleNamespace(_ssrc=1234, transport=SimpleNamespace(
        _state=State.CONNECTED, _tx_srtp=session(OUT), transport=SimpleNamespace(_connection=SimpleNamespace(
            _nominated={1: SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=("127.0.0.1", 9))}))))
    for name, value in (("rtp_history", {}), ("rtp_header_extensions_map", extension_map()), ("mid", "0"),
                        ("octet_count", 0), ("packet_count", 0), ("ntp_timestamp", 0), ("rtp_timestamp", 0)):
        setattr(sender, p + name, value)
    return _LeanSender(sender)  # type: ignore[arg-type]


@needs_native
@pytest.mark.parametrize("transport, native_route", [
    (FakeTransport(5), True), (FakeTransport(5, closing=True), False), (FakeTransport(5, queued=1), False),
    (TurnTransport.__new__(TurnTransport), False)], ids=["open", "closing", "data queued", "TURN relay"])
def test_only_an_open_socket_of_its_own_with_nothing_queued_takes_the_native_send(transport, native_route, monkeypatch) -> None:
    lean = lean_sender_on(transport)
    assert lean.route()[3] == (5 if native_route else None)
    monkeypatch.setenv("FLEET_RTP_NATIVE", "off")
    assert lean_sender_on(transport).route()[3] is None


@needs_native
def test_the_kept_route_follows_the_pair_the_session_and_the_transport_as_they_change() -> None:
    """What a pair and its SRTP session fix is kept between frames; a transport that starts queueing or closes
    takes the native send away at the next frame, a newly nominated pair or session gives a new route."""
    first = FakeTransport(5)
    lean = lean_sender_on(first)
    dtls = lean.sender.transport
    assert lean.route()[1:] == (first, ("127.0.0.1", 9), 5)
    first.queued = 1
    assert lean.route()[3] is None
    first.queued = 0
    assert lean.route()[3] == 5
    second = FakeTransport(6)
    dtls.transport._connection._nominated[1] = SimpleNamespace(protocol=SimpleNamespace(transport=second),
                                                               remote_addr=("127.0.0.2", 10))
    assert lean.route()[1:] == (second, ("127.0.0.2", 10), 6)
    kept = lean.route()[0]
    dtls._tx_srtp = session(OUT)
    assert lean.route()[0] is not kept and lean.route()[0].session is dtls._tx_srtp
    second.closing = True
    assert lean.route()[3] is None
    dtls._state = State.CLOSED
    with pytest.raises(ConnectionError):
        lean.route()


@needs_native
def test_what_the_native_send_hands_back_goes_through_the_transport_in_order_and_is_counted() -> None:
    """No socket (fd -1, on the native route): every packet through the transport, in order, read back by
    pylibsrtp and aiortc; the sender reports' counters and the sequence number as if the socket had taken them.
    Then a frame whose third packet libsrtp refuses (its sequence number used already): the two before it go
    through the transport and are counted, then the error."""
    transport = FakeTransport(-1)
    lean = lean_sender_on(transport)
    assert lean.route()[3] == -1  # the native route, to a socket that takes nothing
    lean.seq = 10
    s, reader = lean.sender, session(IN)

    def read(data: bytes) -> tuple[int, int, bytes]:
        packet = RtpPacket.parse(reader.unprotect(data), extension_map())
        return packet.sequence_number, packet.marker, packet.payload
    lean.frame([b"aa", b"bbb", b"c"], 0, 96)
    assert [read(d) for d in transport.sent] == [(10, 0, b"aa"), (11, 0, b"bbb"), (12, 1, b"c")]
    assert (s._RTCRtpSender__packet_count, s._RTCRtpSender__octet_count, lean.seq) == (3, 6, 13)
    lean.seq = 8
    with pytest.raises(pylibsrtp.Error, match="replay"):
        lean.frame([b"dd", b"e", b"ffff"], 3000, 96)
    assert [read(d) for d in transport.sent[3:]] == [(8, 0, b"dd"), (9, 0, b"e")]
    assert (s._RTCRtpSender__packet_count, s._RTCRtpSender__octet_count, lean.seq) == (5, 9, 10)
