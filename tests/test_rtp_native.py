"""The probe's per-packet RTP work in native code (``fleet._rtpnative``, through ``fleet.srtpcalls.SrtpCalls``)
against aiortc's and pylibsrtp's own: a frame's packets as aiortc serializes them and pylibsrtp protects them
on a twin session keyed alike, on the wire of a real loopback socket; a received packet read as aiortc parses
it. The wire tests in test_lean_rtp.py run over real peer connections on both paths.
"""

from __future__ import annotations

import os
import socket
import struct

import pylibsrtp
import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet import srtpcalls
from fleet.srtpcalls import SrtpCalls

needs_native = pytest.mark.skipif(srtpcalls._rtpnative is None, reason="fleet._rtpnative was not built (no C compiler)")

KEY = bytes(range(30))  # one fixed key: protection is deterministic for a given key, SSRC and sequence number
HISTORY = 128
OUT, IN = pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND


def session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=direction))


def native(direction: int) -> SrtpCalls:
    calls = SrtpCalls(session(direction))
    calls.native = True
    return calls


def extension_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    return m


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


@pytest.fixture(scope="module")
def wire():
    """A datagram socket to send from and one to receive on, over loopback."""
    out, into = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    into.bind(("127.0.0.1", 0))
    into.settimeout(5.0)
    out.setblocking(False)
    yield out, into
    out.close()
    into.close()


@needs_native
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 1200), min_size=1, max_size=40), pt=st.integers(0, 127), seq=st.integers(0, 0xFFFF),
       ts=st.integers(0, 0xFFFFFFFF), ssrc=st.integers(0, 0xFFFFFFFF),
       mid=st.none() | st.text("0123456789abc", min_size=1, max_size=8), abs_send_time=st.none() | st.integers(0, 0xFFFFFF))
def test_a_frame_sent_natively_is_what_aiortc_serializes_and_pylibsrtp_protects(wire, sizes, pt, seq, ts, ssrc, mid,
                                                                                abs_send_time) -> None:
    """Every packet of the frame on the wire, in order, byte for byte the twin's; the history holds the
    unprotected packets under their sequence numbers; the receiving side reads each back as aiortc parses it."""
    out, into = wire
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
@pytest.mark.parametrize("fd, host", [(-1, "127.0.0.1"), (None, "localhost")], ids=["closed socket", "a name, not an address"])
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
    """CI (``.ci/run`` exports FLEET_REQUIRE_NATIVE=1) must build the extension: the probe's figures are the
    native path's."""
    if os.environ.get("FLEET_REQUIRE_NATIVE") != "1":
        pytest.skip("FLEET_REQUIRE_NATIVE is not set")
    assert srtpcalls.native_enabled()
