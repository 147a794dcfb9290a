"""The frame tap's native reassembly (``fleet._rtpnative.Tap``) against its Python twin (``fleet.rtp.TapCore``):
the same packet streams, drawn at random with loss, reordering, duplicates, wraps, cut frames, other sources,
codec switches and malformed payloads, must hand over the same frames (every field) and keep the same counters
after every packet. The Python twin is judged on its own, packet by hand-written packet, in test_rtp.py (both
reassemblies run there too), and the native one over real peer connections in test_lean_rtp.py. ``take``,
the native call that also unprotects, is judged against pylibsrtp's unprotect and aiortc's parse fed to
``TapCore``. Skipped where the native module cannot be used (CI requires it: test_rtp_native.py).
"""

from __future__ import annotations

import struct
import time
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
import aiortc.rtcrtpreceiver
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

import fleet.duties
from fleet import srtpcalls
from fleet.duties import NativeNack, NativeStreamStatistics, nack_add
from fleet.rtp import TapCore
from fleet.srtpcalls import CODEC_H264, CODEC_VP8, MARKER, NACK_DUE, TAKEN, SrtpCalls
from tests.test_lean_rtp import srtp_session

pytestmark = pytest.mark.skipif(srtpcalls.NATIVE_UNUSABLE is not None, reason=str(srtpcalls.NATIVE_UNUSABLE))
SSRC = 0x1234ABCD

# H.264 payloads (RFC 6184): single units of a few types, STAP-A whole or truncated, FU-A pieces, garbage
nal = st.builds(lambda kind, body: bytes([0x60 | kind]) + body, st.sampled_from([1, 5, 7, 8]), st.binary(min_size=0, max_size=40))
stap_a = st.builds(lambda units, cut: (b"\x78" + b"".join(len(u).to_bytes(2, "big") + u for u in units))[:cut],
                   st.lists(nal, min_size=0, max_size=3), st.integers(1, 200))
fu_a = st.builds(lambda s, e, kind, body: bytes([0x7C, (0x80 if s else 0) | (0x40 if e else 0) | kind]) + body,
                 st.booleans(), st.booleans(), st.sampled_from([1, 5]), st.binary(min_size=0, max_size=40))
h264_payload = st.one_of(nal, stap_a, fu_a, st.binary(min_size=0, max_size=6))
# VP8 payloads (RFC 7741): a descriptor with any of its optional fields, possibly cut short, then frame bytes
vp8_payload = st.builds(lambda first, ext, pic, rest, cut: (bytes([first]) + (bytes([ext]) + pic if first & 0x80 else b"")
                                                             + rest)[:cut],
                        st.integers(0, 255), st.integers(0, 255), st.binary(min_size=0, max_size=3),
                        st.binary(min_size=0, max_size=30), st.integers(0, 60))

step = st.tuples(
    st.sampled_from([1, 1, 1, 1, 2, 3, 0, -1, -3, 0x8000, 30000]),   # sequence number step (loss, dup, reorder, jumps)
    st.sampled_from([0, 0, 0, 3000, 3000, -3000, 0x7FFFFFFF]),       # timestamp step (a new frame, back, a far jump)
    st.booleans(),                                                    # marker
    st.sampled_from([SSRC] * 9 + [SSRC + 1]),                         # now and then another source
    st.sampled_from([0] * 12 + [1]),                                  # now and then the other codec
    st.booleans(),                                                    # exact
    st.data())


def stream(steps: list, seq: int, ts: int, codec: int) -> list[tuple]:
    """(codec, ssrc, seq, ts, marker, payload, now, exact) for each drawn step."""
    out, now = [], 1000.0
    for dseq, dts, marker, ssrc, switch, exact, data in steps:
        seq, ts, now = (seq + dseq) & 0xFFFF, (ts + dts) & 0xFFFFFFFF, now + 0.001
        codec = (CODEC_VP8 + CODEC_H264 - codec) if switch else codec
        payload = data.draw(h264_payload if codec == CODEC_H264 else vp8_payload)
        out.append((codec, ssrc, seq, ts, marker, payload, now, exact))
    return out


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple] = []

    def __call__(self, *frame: Any) -> None:
        self.frames.append(frame)


def counters(core: Any) -> tuple:
    return core.packets, core.bytes, core.codec, core.ssrc, core.first_seq, core.seq_unwrapped


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=60), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFFFFFF),
       codec=st.sampled_from([CODEC_VP8, CODEC_H264]))
def test_the_native_tap_hands_over_what_the_python_tap_does(steps, seq, ts, codec) -> None:
    packets = stream(steps, seq, ts, codec)
    ours, theirs = Recorder(), Recorder()
    native, python = srtpcalls._rtpnative.Tap(ours), TapCore(theirs)
    for packet in packets:
        native.packet(*packet)
        python.packet(*packet)
        assert ours.frames == theirs.frames, packet
        assert counters(native) == counters(python), packet
    assert all(type(f[3]) is bytes and isinstance(f[5], bool) for f in ours.frames)


def test_a_frame_across_the_sequence_wrap_comes_whole_from_both() -> None:
    """Hand-written truth: an IDR slice in three FU-As whose sequence numbers wrap."""
    for make in (srtpcalls._rtpnative.Tap, TapCore):
        frames = Recorder()
        core = make(frames)
        for i, (seq, fu) in enumerate([(0xFFFE, 0x85), (0xFFFF, 0x05), (0x0000, 0x45)]):
            core.packet(CODEC_H264, SSRC, seq, 0xFFFFFFFF, i == 2, bytes([0x7C, fu, i]), 5.0 + i, i == 2)
        assert frames.frames == [(0xFFFFFFFF, 5.0, 7.0, b"\x00\x00\x00\x01\x65\x00\x01\x02", 3, True, True, True)]
        assert counters(core) == (3, 9, CODEC_H264, SSRC, 0xFFFE, 0x10000)


@pytest.mark.parametrize("make", [srtpcalls._rtpnative.Tap if srtpcalls._rtpnative else None, TapCore], ids=["native", "python"])
def test_a_finish_that_raises_leaves_the_tap_ready_for_the_next_frame(make) -> None:
    frames: list[tuple] = []

    def finish(*frame: Any) -> None:
        frames.append(frame)
        if len(frames) == 1:
            raise RuntimeError("the caller's")
    core = make(finish)
    with pytest.raises(RuntimeError, match="the caller's"):
        core.packet(CODEC_VP8, SSRC, 1, 10, True, b"\x10\x00", 1.0, False)
    core.packet(CODEC_VP8, SSRC, 2, 20, True, b"\x10\x01", 2.0, False)
    assert frames[1] == (20, 2.0, 2.0, b"\x01", 1, False, True, False)
    with pytest.raises(ValueError, match="codec must be"):
        core.packet(3, SSRC, 3, 30, True, b"\x10\x00", 3.0, False)


def rtp(seq: int, ts: int, marker: bool, payload: bytes, ssrc: int = SSRC, pt: int = 96, padding: int = 0,
        csrcs: int = 0) -> bytes:
    head = struct.pack("!BBHII", 0x80 | (0x20 if padding else 0) | csrcs, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return head + bytes(4 * csrcs) + payload + pad


def stats(stream: StreamStatistics) -> tuple:
    """What receiver reports and ``getStats`` read (``fraction_lost`` moves its priors: asked of both in step)."""
    return (stream.base_seq, stream.max_seq, stream.cycles, stream.packets_received, stream._jitter_q4,
            stream._last_arrival, stream._last_timestamp, stream.packets_expected, stream.packets_lost, stream.jitter,
            stream.fraction_lost)


def media(codec: int, first: bool, body: bytes) -> bytes:
    """A payload: an H.264 single NAL unit (type 1), or VP8 after a descriptor (S on a frame's first packet)."""
    return (b"\x41" if codec == CODEC_H264 else b"\x10" if first else b"\x00") + body


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.tuples(st.lists(st.tuples(st.binary(min_size=1, max_size=1100), st.sampled_from("ddddddlrta"),
                                                    st.integers(0, 30)), min_size=1, max_size=5),
                                 st.integers(0, 20), st.integers(0, 3)), min_size=1, max_size=10),
       seq=st.integers(0, 0xFFFF), taken_over=st.integers(0, 3), codec=st.sampled_from([CODEC_H264, CODEC_VP8]))
def test_take_unprotects_reassembles_and_counts_as_pylibsrtp_aiortc_and_the_python_tap(frames, seq, taken_over,
                                                                                        codec) -> None:
    """Packets in SRTP, each delivered (d), lost (l), delivered after the next one (r), tampered with (t) or
    delivered through aiortc's path (a: the tap's ``packet``, ``NativeStreamStatistics.add``, ``nack_add``, as the
    lean receiver hands a held packet on), each at its own wall time: taken natively, against pylibsrtp's
    unprotect and aiortc's parse fed to ``TapCore``, to aiortc's ``StreamStatistics`` (the same wall clock) and
    to aiortc's ``NackGenerator``. After every packet: the same frames, the same report counters through
    ``NativeStreamStatistics`` and the same missing packets through ``NativeNack`` (``take`` steps it for the next
    packet in order, ``nack_add`` for the others); a tampered packet is dropped (0) and counted by neither. The
    first ``taken_over`` packets go through aiortc's own objects, then both carry on on the tap's state (as the
    lean receiver takes over a source aiortc's path saw)."""
    tx, rx = srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), SrtpCalls(srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    twin_rx = srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    assert rx.native
    wall = [0.0]
    with pytest.MonkeyPatch.context() as patch:  # aiortc's statistics and NativeStreamStatistics read this wall clock
        patch.setattr(aiortc.rtcrtpreceiver, "time", SimpleNamespace(time=lambda: wall[0]))
        patch.setattr(fleet.duties, "time", SimpleNamespace(time=lambda: wall[0]))
        judge_take(tx, rx, twin_rx, frames, seq, taken_over, codec, wall)


def judge_take(tx: Any, rx: SrtpCalls, twin_rx: Any, frames: list, seq: int, taken_over: int, codec: int,
               wall: list[float]) -> None:
    ours, theirs = Recorder(), Recorder()
    native, python = srtpcalls._rtpnative.Tap(ours), TapCore(theirs)
    their_stream, their_nack = StreamStatistics(90000), NackGenerator()
    our_stream, our_nack = StreamStatistics(90000), NackGenerator()  # until taken over
    wire: list[tuple[bytes, bool, str, float]] = []
    ts, at = 90000, 1.7e9
    for bodies, padding, csrcs in frames:
        ts += 3000
        for i, (body, fate, late_ms) in enumerate(bodies):
            seq, marker, at = (seq + 1) & 0xFFFF, i == len(bodies) - 1, at + 0.01
            data = tx.protect(rtp(seq, ts, marker, media(codec, i == 0, body), padding=padding, csrcs=csrcs))
            if fate == "t":
                data = data[:-1] + bytes([data[-1] ^ 1])
            sent = (data, marker, fate, at + late_ms / 1000)  # arrival on the wall clock: the sender's pace, late by a jitter
            if fate == "r" and wire:
                wire.insert(len(wire) - 1, sent)
            elif fate != "l":
                wire.append(sent)
    for n, (data, marker, fate, wall[0]) in enumerate(wire):
        now = 10.0 + n / 100
        try:
            packet = RtpPacket.parse(twin_rx.unprotect(data))
        except pylibsrtp.Error:
            packet = None
        if n == taken_over:  # from here on the tap counts, carrying on what aiortc's objects counted
            our_stream, our_nack = NativeStreamStatistics(native, 90000, our_stream), NativeNack(native, our_nack)
        if n < taken_over or fate == "a":  # aiortc's path unprotects on the same session
            done = TAKEN | (MARKER if marker else 0) if rx.read(data) is not None else 0
            if packet is not None:
                our_stream.add(packet)
                our_missed = nack_add(our_nack, packet)
                native.packet(codec, packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker,
                              packet.payload, now, True)
        else:
            done = native.take(srtpcalls._UNPROTECT, rx.address, data, codec, now, wall[0])  # SrtpCalls.take's call
            our_missed = bool(done & NACK_DUE) and nack_add(our_nack, packet)
        if packet is None:
            assert done == 0
            continue
        assert done & ~NACK_DUE == TAKEN | (MARKER if marker else 0)
        python.packet(codec, packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker,
                      packet.payload, now, True)
        their_stream.add(packet)
        assert our_missed == their_nack.add(packet), n
        assert (our_nack.max_seq, our_nack.missing) == (their_nack.max_seq, their_nack.missing), n
        assert stats(our_stream) == stats(their_stream), n
        assert ours.frames == theirs.frames, n


def test_a_frame_past_the_first_buffer_comes_whole() -> None:
    """An IDR slice of 101 FU-As of up to 1,200 bytes (120 kB: past the tap's first 64 KiB buffer, which doubles)."""
    body = bytes(range(256)) * 470
    pieces = [body[i:i + 1200] for i in range(0, len(body), 1200)]
    for make in (srtpcalls._rtpnative.Tap, TapCore):
        frames = Recorder()
        core = make(frames)
        for i, piece in enumerate(pieces):
            fu = (0x80 if i == 0 else 0) | (0x40 if i == len(pieces) - 1 else 0) | 5
            core.packet(CODEC_H264, SSRC, i, 3000, i == len(pieces) - 1, bytes([0x7C, fu]) + piece, 1.0, False)
        assert frames.frames == [(3000, 1.0, 1.0, b"\x00\x00\x00\x01\x65" + body, len(pieces), True, True, False)]


def test_take_without_a_stamp_times_the_packet_on_time_monotonic() -> None:
    tx, rx = srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), SrtpCalls(srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    frames = Recorder()
    native = srtpcalls._rtpnative.Tap(frames)
    before = time.monotonic()
    NativeStreamStatistics(native, 90000), NativeNack(native)
    rx.take(native, tx.protect(rtp(7, 3000, True, b"\x65\x01")), CODEC_H264, None)
    after = time.monotonic()
    [(ts, first, arrival, data, count, key, complete, exact)] = frames.frames
    assert before <= first == arrival <= after and not exact
    assert (ts, data, count, key, complete) == (3000, b"\x00\x00\x00\x01\x65\x01", 1, True, True)


def test_the_lean_receiver_shows_aiortc_the_taps_statistics_once_a_packet_is_counted() -> None:
    """A receiver never started (test_rtp's), its lean path taking packets directly: a first datagram that is
    dropped leaves aiortc's streams without the source (a stream there with no packet would break its reports);
    the next one puts the tap's statistics there; a source aiortc's path counted first is carried on."""
    from fleet.leanrtp import LeanReceive
    from tests.test_rtp import H264_PT, receiver

    tx, rx = srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), SrtpCalls(srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    frames = Recorder()
    recv = receiver()
    lean = LeanReceive(recv, lambda *a: None, srtpcalls._rtpnative.Tap(frames))
    streams = vars(recv)["_RTCRtpReceiver__remote_streams"]
    active = vars(recv)["_RTCRtpReceiver__active_ssrc"]
    first = tx.protect(rtp(1, 3000, True, b"\x65\x01"))
    lean.take(rx, first[:-1] + bytes([first[-1] ^ 1]), CODEC_H264, H264_PT, SSRC, 1.0)
    assert SSRC not in streams and lean.taken == 0
    lean.take(rx, tx.protect(rtp(2, 6000, True, b"\x65\x02")), CODEC_H264, H264_PT, SSRC, 2.0)
    assert type(streams[SSRC]) is NativeStreamStatistics and lean.taken == 1 and SSRC in active
    assert (streams[SSRC].packets_expected, streams[SSRC].packets_received, len(frames.frames)) == (1, 1, 1)

    recv = receiver()  # a dropped take, then aiortc's path counts: the next take carries that count on
    lean = LeanReceive(recv, lambda *a: None, srtpcalls._rtpnative.Tap(Recorder()))
    streams = vars(recv)["_RTCRtpReceiver__remote_streams"]
    dropped = tx.protect(rtp(3, 9000, True, b"\x65\x03"))
    lean.take(rx, dropped[:-1] + bytes([dropped[-1] ^ 1]), CODEC_H264, H264_PT, SSRC, 3.0)
    lean.duties(RtpPacket.parse(rtp(5, 9000, True, b"\x65\x01")))
    lean.take(rx, tx.protect(rtp(6, 12000, True, b"\x65\x02")), CODEC_H264, H264_PT, SSRC, 4.0)
    assert type(streams[SSRC]) is NativeStreamStatistics
    assert (streams[SSRC].base_seq, streams[SSRC].max_seq, streams[SSRC].packets_received) == (5, 6, 2)

    recv = receiver()  # aiortc's path saw the source first: its counts go on
    lean = LeanReceive(recv, lambda *a: None, srtpcalls._rtpnative.Tap(Recorder()))
    streams = vars(recv)["_RTCRtpReceiver__remote_streams"]
    lean.duties(RtpPacket.parse(rtp(10, 3000, True, b"\x65\x01")))
    lean.take(rx, tx.protect(rtp(11, 6000, True, b"\x65\x02")), CODEC_H264, H264_PT, SSRC, 2.0)  # none missing: no NACK
    assert type(streams[SSRC]) is NativeStreamStatistics
    assert (streams[SSRC].base_seq, streams[SSRC].max_seq, streams[SSRC].packets_received, streams[SSRC].packets_lost) \
        == (10, 11, 2, 0)


def test_a_held_stamp_goes_to_the_packet_of_its_source_and_number_once() -> None:
    """Stamps held for aiortc's path are keyed by source and sequence number: another source's packet of the
    same number gets its own (a retransmission, whose RTX SSRC aiortc hands over as it came), each is handed
    out once, and a packet held without a stamp forgets the one held for its number before."""
    from fleet.leanrtp import LeanReceive
    from tests.test_rtp import receiver

    lean = LeanReceive(receiver(), lambda *a: None)
    lean.hold(SSRC, 7, 1.5)
    lean.hold(SSRC + 1, 7, 2.5)
    lean.hold(SSRC, 9, 3.5)
    lean.hold(SSRC, 9, None)
    assert lean.arrival(SimpleNamespace(ssrc=SSRC + 1, sequence_number=7)) == 2.5
    assert lean.arrival(SimpleNamespace(ssrc=SSRC, sequence_number=7)) == 1.5
    assert lean.arrival(SimpleNamespace(ssrc=SSRC, sequence_number=7)) is None
    assert lean.arrival(SimpleNamespace(ssrc=SSRC, sequence_number=9)) is None
