"""The probe's cheaper RTP data path (fleet.leanrtp ``lean_sender``, ``lean_receive``, ``parse_rtp``) against
aiortc's own: the far end must see the same packets, reports and repairs.

- ``parse_rtp`` is judged against aiortc's ``RtpPacket`` on packets aiortc serialized (CSRCs, header
  extensions and padding included).
- Over real peer connections on loopback (slow): a lean sender's packets, parsed by an untouched aiortc
  receiver, carry what aiortc's own send loop would put there (the mid and abs-send-time extensions, the
  marker on each frame's last packet, consecutive sequence numbers, the frame clock) and the payloads
  aiortc's own packetizer makes of each clip frame; a NACK is answered with the packet it names; sender
  reports arrive. An untouched aiortc sender, in turn, gets receiver reports and NACKs from a lean receiver
  (a packet dropped on purpose on the sender's side), and the lean receiver's tap hands over every frame.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from fractions import Fraction
from typing import Any

import aioice.stun
import pylibsrtp
import av
import pytest
import uvloop
from aiortc import RTCRtpReceiver, clock
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx
from hypothesis import given, settings
from hypothesis import strategies as st

import fleet.rtp
from fleet import srtpcalls
from fleet.duties import NativeStreamStatistics, nack_add
from fleet.media import H264_PROFILE_LEVEL_ID, PacketTrack, clip_payloads, synthetic_clip
from fleet.rtp import FrameTap, TapFrame
from fleet.srtpcalls import SrtpCalls
from fleet.leanrtp import lean_sender, parse_rtp
from fleet.webrtc import codecs_named, loopback_pair, tap_rtp

MID_ID, ABS_SEND_TIME_ID = 1, 3
FPS = 30.0
FRAMES = 75            # 2.5 s: long enough for RTCP reports (aiortc sends them every 0.5 to 1.5 s)
DEADLINE_S = 20.0


def extension_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=MID_ID, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=ABS_SEND_TIME_ID,
                                        uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    return m


# --- the clip packetized once ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clips() -> dict:
    """A 2 s clip per codec, large enough that keyframes take several packets."""
    return {codec: synthetic_clip(320, 240, FPS, codec=codec, gop=30, bitrate_kbps=1500, loop_s=2.0)
            for codec in ("h264", "vp8")}


def aiortc_pack(clip, index: int, picture_id: int) -> list[bytes]:
    """aiortc's own encoder packing clip frame ``index`` (a VP8 encoder whose next picture ID is ``picture_id``)."""
    encoder = H264Encoder() if clip.codec == "h264" else Vp8Encoder()
    if clip.codec == "vp8":
        encoder.picture_id = picture_id
    packet = av.Packet(clip.packets[index])
    packet.pts, packet.time_base = 0, Fraction(1, 90_000)
    return encoder.pack(packet)[0]


@settings(max_examples=200, deadline=None)
@given(codec=st.sampled_from(["h264", "vp8"]), index=st.integers(0, 59), picture_id=st.integers(0, 0x7FFF))
def test_a_clip_packetized_once_is_what_aiortc_packs_each_time(clips, codec, index, picture_id) -> None:
    clip = clips[codec]
    assert list(clip_payloads(clip).frame(index, picture_id)) == aiortc_pack(clip, index, picture_id)


def test_the_clips_packetized_once_have_frames_of_several_packets_and_are_shared(clips) -> None:
    """The property above covers frames split over packets (each keyframe here), and one clip's payloads are
    built once for every sender of it."""
    for clip in clips.values():
        assert all(len(aiortc_pack(clip, i, 200)) > 1 for i in range(0, clip.frames, 30))
        assert clip_payloads(clip) is clip_payloads(clip)


# --- SRTP on the session's own buffer ---------------------------------------------------------------------

def srtp_session(direction: int) -> pylibsrtp.Session:
    key = bytes(range(30))  # one fixed key: protection is deterministic for a given key, SSRC and sequence
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=direction))


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 1300), min_size=1, max_size=20), seq0=st.integers(0, 0xFFFF))
def test_srtp_calls_protect_and_unprotect_as_pylibsrtp_does(sizes, seq0) -> None:
    """The same packets through SrtpCalls and through pylibsrtp's own wrapper, on sessions keyed alike: the same
    bytes out, unprotected back to the packets; a tampered packet is refused with pylibsrtp's error. Between
    packets, the wrapper protects an RTCP report on the very session SrtpCalls uses (as aiortc does with its
    own sender reports): neither disturbs the other."""
    ours_tx, theirs_tx = SrtpCalls(srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)), srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    ours_rx = SrtpCalls(srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    for k, size in enumerate(sizes):
        plain = struct.pack("!BBHII", 0x80, 96, (seq0 + k) & 0xFFFF, 1000 * k, 1234) + bytes((k + i) % 251 for i in range(size))
        protected = ours_tx.protect(plain)
        assert protected == theirs_tx.protect(plain) and protected != plain
        report = struct.pack("!BBHI", 0x80, 200, 6, 1234) + bytes(20)   # a sender report's header and body
        assert ours_tx.session.protect_rtcp(report) == theirs_tx.protect_rtcp(report)
        assert ours_rx.unprotect(protected) == plain
    with pytest.raises(pylibsrtp.Error):
        ours_rx.unprotect(protected[:-1] + bytes([protected[-1] ^ 1]))


def test_srtp_calls_leave_a_packet_too_long_for_the_buffer_to_pylibsrtp() -> None:
    with pytest.raises(ValueError, match="too long"):
        SrtpCalls(srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)).protect(bytes(1400))


# --- parse_rtp ---------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(pt=st.integers(0, 127), marker=st.integers(0, 1), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFFFFFF),
       ssrc=st.integers(0, 0xFFFFFFFF), csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
       mid=st.none() | st.text("0123456789abc", min_size=1, max_size=8),
       abs_send_time=st.none() | st.integers(0, 0xFFFFFF), padding=st.integers(0, 255),
       payload=st.binary(max_size=1200))
def test_parse_rtp_reads_what_aiortc_serialized(pt, marker, seq, ts, ssrc, csrc, mid, abs_send_time, padding,
                                                payload) -> None:
    packet = RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts, ssrc=ssrc)
    packet.csrc, packet.payload, packet.padding_size = csrc, payload, padding
    packet.extensions.mid, packet.extensions.abs_send_time = mid, abs_send_time
    data = packet.serialize(extension_map())
    truth = RtpPacket.parse(data, extension_map())
    view = parse_rtp(data)
    assert view is not None
    assert (view.payload_type, view.marker, view.sequence_number, view.timestamp, view.ssrc, view.payload) == \
        (truth.payload_type, truth.marker, truth.sequence_number, truth.timestamp, truth.ssrc, truth.payload)


@pytest.mark.parametrize("data", [b"", b"\x80" * 11, bytes([0x40]) + bytes(15),          # short; version 1
                                  struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + b"\xbe\xde",  # extension cut short
                                  struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + b"\xbe\xde\x00\x05" + bytes(8),
                                  struct.pack("!BBHII", 0xA0, 96, 1, 2, 3) + b"\x01\x02\x20"])  # padding > payload
def test_parse_rtp_refuses_what_is_not_an_rtp_packet(data: bytes) -> None:
    assert parse_rtp(data) is None


# --- the NACK generator's fast path -------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 0xFFFF),
       steps=st.lists(st.one_of(st.just(1), st.integers(-40, 40), st.integers(-0x8000, 0x8000)), max_size=200))
def test_the_nack_fast_path_leaves_the_generator_as_aiortcs_add_does(start: int, steps: list[int]) -> None:
    """Packets in order (most), gaps, repeats, late ones and sequence wrap-arounds: after each, ``nack_add``
    answers and leaves the generator as aiortc's own ``NackGenerator.add`` does on a twin."""
    ours, theirs = NackGenerator(), NackGenerator()
    seq = start
    for step in [0, *steps]:
        seq = (seq + step) & 0xFFFF
        packet = RtpPacket(sequence_number=seq)
        assert nack_add(ours, packet) == theirs.add(packet)
        assert (ours.max_seq, ours.missing) == (theirs.max_seq, theirs.missing)


# --- over real peer connections -----------------------------------------------------------------------------

async def until(condition, what: str) -> None:
    """Wait for ``condition()`` on the event loop, at most DEADLINE_S."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def eventually(read) -> list:
    """``await read()`` until it is not empty, at most DEADLINE_S."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not (found := await read()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for stats")
        await asyncio.sleep(0.05)
    return found


async def close(*pcs) -> None:
    """Close the peers, each within a deadline (aiortc's close waits forever for a sender that never started)."""
    for pc in pcs:
        await asyncio.wait_for(pc.close(), DEADLINE_S)


async def connected_pair(track: PacketTrack, lean_send: bool, on_receiver) -> tuple:
    """H.264 over loopback: the sender lean or aiortc's own; ``on_receiver`` prepares the receiver."""
    return await loopback_pair(track, codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID),
                               on_sender=lean_sender if lean_send else lambda s: None, on_receiver=on_receiver)


async def tapped_pair(track: PacketTrack, frames: list[TapFrame]) -> tuple:
    """aiortc's sender to a receiver on the probe's lean path, its frames appended to ``frames``: the two
    peers, the sender and the receiver's FrameTap."""
    taps: list[FrameTap] = []

    def lean(receiver: RTCRtpReceiver) -> None:
        taps.append(FrameTap(receiver, frames.append, decode=False, bandwidth_feedback=False))

    a, b, sender, _ = await connected_pair(track, lean_send=False, on_receiver=lean)
    return a, b, sender, taps[0]


def aiortc_payloads(clip, n: int) -> list[bytes]:
    """aiortc's own packetization of clip frame ``n`` (its H.264 encoder's pack, a fresh one)."""
    packet = av.Packet(clip.packets[n % clip.frames])
    packet.pts, packet.time_base = 0, Fraction(1, 90_000)
    return H264Encoder().pack(packet)[0]


@pytest.fixture(params=["native", "python"])
def rtp_path(request, monkeypatch: pytest.MonkeyPatch):
    """A wire test on each per-packet path: the native one (``fleet._rtpnative``, where it can be used) and
    Python's: (the path, the native calls made). The native calls are counted on both: the test asks its own
    side's count of the native run (frames the socket took whole, nothing handed back to the transport; packets
    read; packets read into the native frame tap through ``SrtpCalls.take``, the ones before the fast way's
    bound call takes the rest; or native frame taps made); the Python run must have made none."""
    native = request.param == "native"
    if native and srtpcalls.NATIVE_UNUSABLE is not None:
        pytest.skip(srtpcalls.NATIVE_UNUSABLE)
    monkeypatch.setenv("FLEET_RTP_NATIVE", "1" if native else "0")
    calls = {"frames_taken_whole": 0, "reads": 0, "takes": 0, "taps": 0}
    take, native_tap = srtpcalls.SrtpCalls.take, fleet.rtp.native_tap

    def counted_take(*args: Any) -> Any:
        calls["takes"] += 1
        return take(*args)

    def counted_tap(*args: Any) -> Any:
        tap = native_tap(*args)
        calls["taps"] += tap is not None
        return tap
    monkeypatch.setattr(srtpcalls.SrtpCalls, "take", counted_take)
    monkeypatch.setattr(fleet.rtp, "native_tap", counted_tap)
    if srtpcalls._rtpnative is not None:
        send_frame, unprotect_parse = srtpcalls._rtpnative.send_frame, srtpcalls._rtpnative.unprotect_parse

        def counted_send(*args: Any) -> Any:
            result = send_frame(*args)
            calls["frames_taken_whole"] += not result[3]
            return result

        def counted_read(*args: Any) -> Any:
            calls["reads"] += 1
            return unprotect_parse(*args)
        monkeypatch.setattr(srtpcalls._rtpnative, "send_frame", counted_send)
        monkeypatch.setattr(srtpcalls._rtpnative, "unprotect_parse", counted_read)
    yield request.param, calls
    if not native:
        assert calls == {"frames_taken_whole": 0, "reads": 0, "takes": 0, "taps": 0}, "the Python run took the native path"


def took_native(rtp_path: tuple[str, dict[str, int]], side: str) -> bool:
    """Whether the run was the Python one, or the native one made calls of ``side``."""
    path, calls = rtp_path
    return path == "python" or calls[side] > 0


async def stats_of(pc, kind: str) -> list:
    return [s for s in (await pc.getStats()).values() if s.type == kind]


@pytest.mark.slow
def test_a_lean_sender_puts_on_the_wire_what_aiortc_would_and_answers_a_nack(rtp_path) -> None:
    clip = synthetic_clip(160, 96, FPS, codec="h264", gop=30)
    track = PacketTrack(clip, max_frames=FRAMES)
    packets: list[RtpPacket] = []
    arrivals_ntp: list[int] = []   # aiortc's NTP clock when each packet reached the receiver

    async def main() -> None:
        def plain(receiver: RTCRtpReceiver) -> None:
            async def record(packet: RtpPacket, arrival_time_ms: int) -> None:
                packets.append(packet)
                arrivals_ntp.append(clock.current_ntp_time())
                await original(packet, arrival_time_ms)

            original = tap_rtp(receiver, record)

        a, b, sender, receiver = await connected_pair(track, lean_send=True, on_receiver=plain)
        try:
            # every frame's last packet (its marker) arrived: the last one handed to the sender may still be in flight
            await until(lambda: sum(1 for p in packets if p.marker and p.ssrc == sender._ssrc) >= FRAMES, "every frame")
            media = [p for p in packets if p.payload_type == packets[0].payload_type and p.ssrc == sender._ssrc]
            mid = a.getTransceivers()[0].mid
            # frame by frame: consecutive sequence numbers, the marker on the last, the 90 kHz frame clock
            frames: list[list[RtpPacket]] = [[]]
            for p in media:
                frames[-1].append(p)
                if p.marker:
                    frames.append([])
            frames.pop()
            assert len(frames) == FRAMES
            seqs = [p.sequence_number for p in media]
            assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:]))
            ts0 = frames[0][0].timestamp
            for n, frame in enumerate(frames):
                assert {p.timestamp for p in frame} == {(ts0 + round(n * 90_000 / FPS)) & 0xFFFFFFFF}
                assert [p.marker for p in frame] == [0] * (len(frame) - 1) + [1]
                assert [p.payload for p in frame] == aiortc_payloads(clip, n)
                assert all(p.extensions.mid == mid for p in frame)
            # abs-send-time: the 6.18 fixed-point NTP seconds (mod 64) of sending, within a second before arrival
            for p, ntp in zip(packets, arrivals_ntp):
                assert (((ntp >> 14) - p.extensions.abs_send_time) & 0xFFFFFF) < 1 << 18, (p.extensions, ntp)
            # sender reports (RTCP SR) reached the receiver, with the sender's final counts
            async def final_report() -> list:
                return [s for s in await stats_of(b, "remote-outbound-rtp") if s.packetsSent == len(media)]

            (sent_report,) = await eventually(final_report)
            assert sent_report.bytesSent == sum(len(p.payload) for p in media)
            # a NACK for a packet already received is answered with that packet (RTX, unwrapped here)
            wanted = media[len(media) // 2]
            before = len(packets)
            await receiver._send_rtcp_nack(wanted.ssrc, [wanted.sequence_number])
            await until(lambda: len(packets) > before, "the retransmission")
            rtx = packets[before]
            apt = wanted.payload_type
            rtx_pt = int(re.search(r"a=rtpmap:(\d+) rtx/90000", b.localDescription.sdp)[1])  # as negotiated
            assert (rtx.payload_type, rtx.ssrc) == (rtx_pt, sender._rtx_ssrc)  # as RTX, on its own stream
            repaired = unwrap_rtx(rtx, payload_type=apt, ssrc=wanted.ssrc)
            assert (repaired.sequence_number, repaired.timestamp, repaired.payload) == \
                (wanted.sequence_number, wanted.timestamp, wanted.payload)
        finally:
            await close(a, b)

    asyncio.run(main())
    assert took_native(rtp_path, "frames_taken_whole")


@pytest.mark.slow
def test_a_lean_vp8_sender_puts_on_the_wire_what_aiortc_would_with_picture_ids_counting_up(rtp_path) -> None:
    """VP8 on the wire: each frame's payloads are what aiortc's encoder packs for that frame and picture ID, and
    the IDs count up by one a frame (modulo 2^15) from the first one sent."""
    clip = synthetic_clip(160, 96, FPS, codec="vp8", gop=30)
    track = PacketTrack(clip, max_frames=30)
    packets: list[RtpPacket] = []

    async def main() -> None:
        def plain(receiver: RTCRtpReceiver) -> None:
            async def record(packet: RtpPacket, arrival_time_ms: int) -> None:
                packets.append(packet)
                await original(packet, arrival_time_ms)

            original = tap_rtp(receiver, record)

        a, b, sender, _ = await loopback_pair(track, codecs_named("video", "VP8"), on_sender=lean_sender,
                                              on_receiver=plain)
        try:
            await until(lambda: sum(1 for p in packets if p.marker and p.ssrc == sender._ssrc) >= 30, "every frame")
        finally:
            await close(a, b)
        media = [p for p in packets if p.payload_type == packets[0].payload_type and p.ssrc == sender._ssrc]
        frames: dict[int, list[bytes]] = {}
        for p in media:
            frames.setdefault(p.timestamp, []).append(p.payload)
        assert len(frames) == 30
        first_id = VpxPayloadDescriptor.parse(media[0].payload)[0].picture_id
        for n, payloads in enumerate(frames.values()):  # in the order sent (loopback keeps it)
            assert payloads == aiortc_pack(clip, n, (first_id + n) % (1 << 15)), n

    uvloop.run(main())  # the loop Ray runs the probe on: its transports are what the native send checks
    assert took_native(rtp_path, "frames_taken_whole")


def test_a_lean_receiver_hands_over_every_frame_and_sends_reports_and_nacks(monkeypatch: pytest.MonkeyPatch, rtp_path) -> None:
    clip = synthetic_clip(160, 96, FPS, codec="h264", gop=30)
    parse_message = aioice.stun.parse_message
    rtp_tried_as_stun = [0]   # by the receiving peer, once the lean path took a packet

    def counting_parse(data: bytes, *args: Any, **kwargs: Any) -> Any:
        # what reaches the receiving peer: media RTP, RTX and the sender's reports (SR, 200); the sending peer
        # gets the receiver's RTCP only (RR 201, NACK 205, PLI 206), which no lean path takes
        lean = taps[0]._lean if taps else None
        if lean is not None and lean.taken and data and 127 < data[0] < 192 and not 201 <= data[1] <= 223:
            rtp_tried_as_stun[0] += 1
        return parse_message(data, *args, **kwargs)

    monkeypatch.setattr(aioice.stun, "parse_message", counting_parse)
    track = PacketTrack(clip, max_frames=FRAMES)
    frames: list[TapFrame] = []
    taps: list[FrameTap] = []
    nacked: list[int] = []
    dropped: list[int] = []
    slow_takes = [0]  # media packets the lean path took natively without its fast way

    async def main() -> None:
        a, b, sender, tap = await tapped_pair(track, frames)
        taps.append(tap)
        lean_path = tap._lean
        assert lean_path is not None
        take = lean_path.take

        def counted_take(*args: Any) -> None:
            slow_takes[0] += 1
            take(*args)
        lean_path.take = counted_take  # type: ignore[method-assign]
        transport = sender.transport
        send_rtp, retransmit = transport._send_rtp, sender._retransmit

        media_sent = [0]
        sent_ts: dict[int, int] = {}  # sequence number -> RTP timestamp of every media packet sent, in order
        media_pt: list[int] = []      # the first RTP packet is media (retransmissions come only after a NACK)

        async def lossy_send(data: bytes) -> None:
            # drop the 40th media packet (not RTCP, not a retransmission), once: the receiver must NACK it
            if not 192 <= data[1] <= 223 and not media_pt:
                media_pt.append(data[1] & 0x7F)
            if not 192 <= data[1] <= 223 and data[1] & 0x7F == media_pt[0]:
                media_sent[0] += 1
                seq, ts = struct.unpack_from("!HI", data, 2)
                sent_ts[seq] = ts
                if media_sent[0] == 40:
                    dropped.append(seq)
                    return
            await send_rtp(data)

        async def recording_retransmit(seq: int) -> None:
            nacked.append(seq)
            await retransmit(seq)

        transport._send_rtp = lossy_send
        sender._retransmit = recording_retransmit
        try:
            last = round((FRAMES - 1) * 90_000 / FPS)
            await until(lambda: bool(frames) and frames[-1].timestamp - frames[0].timestamp >= last, "the last frame")
            await until(lambda: bool(nacked), "a NACK")
            assert dropped and dropped[0] in nacked
            # every media packet that left reached the tap (the retransmission is aiortc's, left out of it)
            tap = taps[0]
            assert tap.packets == media_sent[0] - 1 and tap.packets_lost == 1
            # ... and the lean path took nearly all of them (aiortc's path takes those that arrive while its queue
            # holds older data: the handshake's tail)
            assert 0.9 * (media_sent[0] - 1) <= lean_path.taken <= media_sent[0] - 1, (lean_path.taken, media_sent)
            # ... and, from its first packet on, the receiving peer's datagrams (RTP and RTCP alike) were no longer
            # tried as STUN first
            assert rtp_tried_as_stun[0] == 0, (rtp_tried_as_stun, media_sent)
            # ... and every frame timed by when its last packet reached the socket (fleet.sockstamp), on either
            # path: stamping is on from the DTLS handshake, before any media (the times: the test below)
            assert all(f.exact for f in frames), sum(not f.exact for f in frames)
            # every frame came through whole but the one that lost a packet (gone, if that was its only one, or
            # incomplete) and the one after it (whose head cannot be proven then)
            lost = round((sent_ts[dropped[0]] - next(iter(sent_ts.values()))) * FPS / 90_000)
            by_n = {round((f.timestamp - frames[0].timestamp) * FPS / 90_000): f for f in frames}
            assert set(range(FRAMES)) - {lost} <= set(by_n) <= set(range(FRAMES))
            assert all(f.complete for n, f in by_n.items() if n not in (lost, lost + 1))
            assert lost not in by_n or not by_n[lost].complete
            assert frames[0].keyframe
            # receiver reports (RTCP RR) from the lean receiver reach the sender, and count as it did: every
            # media packet but the one dropped (its repair came on the RTX stream)
            async def final_report() -> list:
                return [s for s in await stats_of(a, "remote-inbound-rtp") if s.packetsReceived == media_sent[0] - 1]

            (report,) = await eventually(final_report)
            assert report.packetsLost == 1
            # ... the repair marked the missing packet found, and the native run counted on the tap's state
            assert not lean_path.generator.missing
            # ... the native run's packets after its first went the fast way (the source fixed: ``_Fast``)
            if rtp_path[0] == "native":
                assert lean_path.fast is not None and slow_takes[0] <= 3, (lean_path.fast, slow_takes)
            streams = vars(taps[0].receiver)["_RTCRtpReceiver__remote_streams"]
            assert (type(streams[tap.ssrc]) is NativeStreamStatistics) == (rtp_path[0] == "native")
        finally:
            await close(a, b)

    asyncio.run(main())
    assert took_native(rtp_path, "takes") and took_native(rtp_path, "taps")


STALL_S = 0.06            # the loop kept busy right after a stalled frame's last packet left
STAMP_TOLERANCE_S = 0.003  # a socket stamp's distance from the send on loopback (measured: under 0.1 ms)
STALLED = (20, 32)         # the frames (in send order) whose last packet waits out a stall, a DTLS record before it
# DTLS 1.2 application data in epoch 1 whose MAC fails: silently discarded (RFC 6347 section 4.1.2.7)
BOGUS_DTLS_RECORD = bytes([23, 0xFE, 0xFD, 0, 1]) + (1 << 20).to_bytes(6, "big") + (48).to_bytes(2, "big") + bytes(48)


def wall_offset() -> float:
    """The wall clock less the monotonic one, now (a VM's time sync may slew or step the wall clock)."""
    return time.time() - time.monotonic()


class HandledFrames(list):
    """The frames a tap handed over, and the wall clock's offset when each was (RTP timestamp -> offset)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset: dict[int, float] = {}

    def append(self, frame: TapFrame) -> None:
        self.offset[frame.timestamp] = wall_offset()
        super().append(frame)


def busy(seconds: float) -> None:
    """Keep the loop's thread on the CPU (the stall under test, not a wait for anything)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def record_held_answers(lean_path: Any, answers: list[int]) -> None:
    """Append to ``answers`` the sequence number of every packet of aiortc's path whose stamp the lean path held."""
    arrival = lean_path.arrival

    def recording_arrival(packet: Any) -> float | None:
        at = arrival(packet)
        if at is not None:
            answers.append(packet.sequence_number)
        return at

    lean_path.arrival = recording_arrival


@pytest.mark.slow
@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_frame_that_waited_out_a_stall_of_the_loop_is_timed_by_its_arrival_at_the_socket(new_loop) -> None:
    """The tester's loop stalls right after a frame's last packet left (a DTLS record just before it, which
    the receiving DTLS transport drops: its MAC cannot be right): the frame is handled after the stall, and
    timed at its send all the same. On uvloop, which reads both datagrams in one go, the DTLS record waits in
    aiortc's queue when the frame's packet comes, so that packet takes aiortc's path, in order behind it, with
    its stamp. (RTCP would not do: the lean path handles it as it arrives, ``fleet.leanice``.)"""
    clip = synthetic_clip(160, 96, FPS, codec="h264", gop=30)
    track = PacketTrack(clip, max_frames=45)
    frames = HandledFrames()
    marker_sent: dict[int, float] = {}  # RTP timestamp -> when its frame's last packet left
    sent_offset: dict[int, float] = {}  # ... and the wall clock's offset then
    held_answers: list[int] = []        # sequence numbers whose stamp aiortc's path got from the lean path

    async def main() -> None:
        a, b, sender, tap = await tapped_pair(track, frames)
        lean_path = tap._lean
        assert lean_path is not None
        record_held_answers(lean_path, held_answers)
        send_rtp = sender.transport._send_rtp

        async def stalling_send(data: bytes) -> None:
            if 192 <= data[1] <= 223 or not data[1] & 0x80:  # RTCP, or not a frame's last packet
                await send_rtp(data)
                return
            ts = struct.unpack_from("!I", data, 4)[0]
            stall = len(marker_sent) in STALLED
            if stall:
                await sender.transport.transport._send(BOGUS_DTLS_RECORD)  # as it is, not as RTP
            marker_sent[ts], sent_offset[ts] = time.monotonic(), wall_offset()
            await send_rtp(data)
            if stall:
                busy(STALL_S)

        sender.transport._send_rtp = stalling_send
        try:
            await until(lambda: len(marker_sent) > max(STALLED) + 2 and len(frames) >= len(marker_sent) - 2,
                        "the frames after the stalls")
        finally:
            await close(a, b)

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
    # a socket stamp is on the wall clock, moved onto the monotonic one when it is read: by as much as the wall
    # clock moved against the monotonic one from its arrival to then (slewed, or stepped: 0.5 ms ten times a
    # second on this project's build machine), at most from its send to its frame's handing over
    by_ts = {f.timestamp: f for f in frames}
    stalled = [ts for n, ts in enumerate(marker_sent) if n in STALLED]
    for ts in stalled:
        frame = by_ts[ts]
        # handled after the stall (a loop-time stamp would be at least STALL_S late); stamped at the socket
        early = abs(frames.offset[ts] - sent_offset[ts]) + 2e-6
        assert frame.exact and -early <= frame.arrival - marker_sent[ts] <= STAMP_TOLERANCE_S, (
            ts, frame.exact, frame.arrival - marker_sent[ts], early)
    # every frame after the first few is stamped at the socket, on either path
    assert all(by_ts[ts].exact for ts in list(marker_sent)[5:] if ts in by_ts)
    if new_loop is uvloop.new_event_loop:
        assert held_answers, "no packet took aiortc's path behind the DTLS record"


class KindsNotYet(dict):
    """A fake of the receiver's payload kinds (fleet.webrtc.PayloadKinds) that knows none for the first
    ``unknown`` media packets asked about, as before aiortc has set the receiver's codecs (media that beat the
    receiver's set-up, which a slow loop lets happen), then the real ones."""

    def __init__(self, real: Any, unknown: int) -> None:
        super().__init__()
        self.real, self.unknown = real, unknown

    def __missing__(self, payload_type: int) -> str | None:
        if self.unknown > 0:
            self.unknown -= 1
            return None
        return self.real[payload_type]


UNKNOWN_FIRST = 8  # packets the lean path cannot tell for media: the first few frames (the clip's first has 3)


@pytest.mark.slow
def test_media_before_the_receivers_codecs_are_known_keep_their_socket_stamps() -> None:
    """The first frames' packets, left to aiortc's path while the lean path cannot tell them for media yet,
    are timed by when their last packet reached the socket all the same: their stamps held for aiortc's path.
    The loop stalls right after the second frame's last packet left: handled after the stall, that frame is
    timed at its send."""
    clip = synthetic_clip(160, 96, FPS, codec="h264", gop=30)
    track = PacketTrack(clip, max_frames=30)
    frames = HandledFrames()
    held_answers: list[int] = []  # sequence numbers whose stamp aiortc's path got from the lean path
    markers: list[tuple[int, int, float, float]] = []  # (RTP timestamp, sequence number, sent, wall offset)
    taps: list[FrameTap] = []

    def stalling(sender: Any) -> None:
        send_rtp = sender.transport._send_rtp

        async def send(data: bytes) -> None:
            if 192 <= data[1] <= 223 or not data[1] & 0x80:  # RTCP, or not a frame's last packet
                await send_rtp(data)
                return
            seq, ts = struct.unpack_from("!HI", data, 2)
            markers.append((ts, seq, time.monotonic(), wall_offset()))
            await send_rtp(data)
            if len(markers) == 2:
                busy(STALL_S)

        sender.transport._send_rtp = send

    def lean(receiver: RTCRtpReceiver) -> None:  # before any media: the first packets go aiortc's way
        tap = FrameTap(receiver, frames.append, decode=False, bandwidth_feedback=False)
        assert tap._lean is not None
        tap._lean.kinds = KindsNotYet(tap._lean.kinds, UNKNOWN_FIRST)  # type: ignore[assignment]
        record_held_answers(tap._lean, held_answers)
        taps.append(tap)

    async def main() -> None:
        a, b, _, _ = await loopback_pair(track, codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID),
                                         on_sender=stalling, on_receiver=lean)
        try:
            await until(lambda: len(frames) >= 20, "20 frames")
        finally:
            await close(a, b)

    asyncio.run(main())
    assert taps[0]._lean is not None and taps[0]._lean.taken > 0  # the lean path took the rest
    ts, seq, sent, offset = markers[1]
    stalled = next(f for f in frames if f.timestamp == ts)
    assert seq in held_answers  # its last packet went aiortc's way, its stamp held for it
    early = abs(frames.offset[ts] - offset) + 2e-6  # the wall clock's moves against the monotonic one (above)
    assert stalled.exact and -early <= stalled.arrival - sent <= STAMP_TOLERANCE_S, (stalled, sent, early)
    assert all(f.exact for f in frames), [n for n, f in enumerate(frames) if not f.exact]
