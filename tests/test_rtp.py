"""fleet.rtp on exact packets: the H.264 depacketizer (RFC 6184: single NAL unit, STAP-A, FU-A) and the frame
tap that reassembles access units on the marker bit, with loss, reordering and wraparound.

Every packet is built as wire bytes here (RTP header by hand, parsed by aiortc's ``RtpPacket``) and every
expected access unit is written out by hand from the NAL units below, never by calling fleet.rtp's helpers.
Every test runs on both reassemblies, the native one and its Python twin (``reassembly``). The tap runs on a
real aiortc receiver that is never started: ``FrameTap.packet`` takes the packet and its
arrival time directly, so no network, no event loop and no clock are involved.
"""

from __future__ import annotations

import random
import re
import struct
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from fleet import srtpcalls
from fleet.rtp import FrameTap, H264Depacketizer, TapCore, TapFrame
from fleet.webrtc import PayloadKinds

SSRC = 0x1234ABCD
H264_PT, VP8_PT, RTX_PT, VP9_PT, UNKNOWN_PT = 96, 97, 98, 100, 111
FRAME = 3000  # RTP ticks of one frame at 30 fps on the 90 kHz video clock

SC = b"\x00\x00\x00\x01"  # the Annex B start code the depacketizer writes before each NAL unit
SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xD9, 0x00, 0xA0, 0x47, 0xFE, 0xC8])  # nal_ref_idc 3, type 7
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])                                      # nal_ref_idc 3, type 8
IDR = bytes([0x65]) + bytes(range(0x10, 0x40))                             # nal_ref_idc 3, type 5 (IDR slice)
SLICE = bytes([0x41, 0x9A, 0x02, 0x03, 0x04])                              # nal_ref_idc 2, type 1 (non-IDR)

# STAP-A (type 24, NRI the highest of its units): 16-bit size before each unit
STAP_A = bytes([0x78, 0x00, len(SPS)]) + SPS + bytes([0x00, len(PPS)]) + PPS
# FU-A of the IDR slice: indicator F|NRI of the unit + type 28 (0x7C); header S/E bits + the unit's type 5
IDR_START = bytes([0x7C, 0x85]) + IDR[1:17]
IDR_MIDDLE = bytes([0x7C, 0x05]) + IDR[17:33]
IDR_END = bytes([0x7C, 0x45]) + IDR[33:]
# the IDR slice as two FU-As plus a second slice: a two-slice keyframe
IDR_A_START, IDR_A_END = bytes([0x7C, 0x85]) + IDR[1:20], bytes([0x7C, 0x45]) + IDR[20:]

KEY_AU = SC + SPS + SC + PPS + SC + IDR  # the keyframe access unit the tap must hand over


def wire(seq: int, ts: int, payload: bytes, marker: bool = False, pt: int = H264_PT, ssrc: int = SSRC) -> RtpPacket:
    """An RTP packet as it arrives: V=2, no padding/extension/CSRC, then the payload."""
    header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    return RtpPacket.parse(header + payload)


def receiver() -> RTCRtpReceiver:
    """A real aiortc video receiver, never started, with the payload types a negotiation would have given it."""
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    recv = RTCRtpReceiver("video", transport)
    codecs = vars(recv)["_RTCRtpReceiver__codecs"]  # what receive() fills from the negotiated parameters
    for pt, mime in ((H264_PT, "video/H264"), (VP8_PT, "video/VP8"), (RTX_PT, "video/rtx"), (VP9_PT, "video/VP9")):
        codecs[pt] = RTCRtpCodecParameters(mimeType=mime, clockRate=90_000, payloadType=pt)
    return recv


def test_payload_kinds_name_media_keep_negotiated_types_and_look_again_for_unknown_ones() -> None:
    recv = receiver()
    kinds = PayloadKinds(recv)
    assert (kinds[H264_PT], kinds[VP8_PT], kinds[VP9_PT], kinds[RTX_PT], kinds[UNKNOWN_PT]) == \
        ("H264", "VP8", "VP9", None, None)
    assert dict(kinds) == {H264_PT: "H264", VP8_PT: "VP8", VP9_PT: "VP9", RTX_PT: None}  # the unknown one not kept
    vars(recv)["_RTCRtpReceiver__codecs"][UNKNOWN_PT] = RTCRtpCodecParameters(
        mimeType="video/VP8", clockRate=90_000, payloadType=UNKNOWN_PT)  # negotiated later
    assert kinds[UNKNOWN_PT] == "VP8"


@pytest.fixture(autouse=True, params=["native", "python"])
def reassembly(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both reassemblies: ``fleet._rtpnative.Tap`` (where it can be used) and ``fleet.rtp.TapCore``."""
    if request.param == "native" and srtpcalls.NATIVE_UNUSABLE is not None:
        pytest.skip(srtpcalls.NATIVE_UNUSABLE)
    monkeypatch.setenv("FLEET_RTP_NATIVE", "1" if request.param == "native" else "0")
    return str(request.param)


class Tapped:
    """A frame tap and the frames it handed over."""

    def __init__(self) -> None:
        self.frames: list[TapFrame] = []
        self.tap = FrameTap(receiver(), self.frames.append)
        assert isinstance(self.tap.core, TapCore) != srtpcalls.native_enabled()

    def feed(self, *packets: tuple[float, RtpPacket]) -> list[TapFrame]:
        """Deliver ``(arrival, packet)`` pairs in order; return the frames handed over meanwhile."""
        before = len(self.frames)
        for now, packet in packets:
            self.tap.packet(packet, now)
        return self.frames[before:]


# --- the depacketizer on its own ------------------------------------------------------------------------------


def test_single_nal_unit_packet_is_the_nal_unit_after_a_start_code() -> None:
    d = H264Depacketizer()
    assert d.push(SLICE) == (SC + SLICE, True)
    assert d.push(SPS) == (SC + SPS, True)


def test_stap_a_yields_each_aggregated_unit_in_order() -> None:
    three = bytes([0x78, 0x00, len(SPS)]) + SPS + bytes([0x00, len(PPS)]) + PPS + bytes([0x00, len(IDR)]) + IDR
    assert H264Depacketizer().push(three) == (KEY_AU, True)
    assert H264Depacketizer().push(STAP_A) == (SC + SPS + SC + PPS, True)


@pytest.mark.parametrize("payload", [
    bytes([0x78, 0x00, len(SPS) + 1]) + SPS,              # a size past the end of the packet
    bytes([0x78, 0x00, 0x00, 0x00, len(PPS)]) + PPS,      # a zero size
], ids=["size-past-end", "zero-size"])
def test_truncated_stap_a_is_rejected(payload: bytes) -> None:
    with pytest.raises(ValueError, match="truncated STAP-A"):
        H264Depacketizer().push(payload)


def test_fu_a_start_middle_end_rebuild_one_nal_unit() -> None:
    d = H264Depacketizer()
    start, middle, end = d.push(IDR_START), d.push(IDR_MIDDLE), d.push(IDR_END)
    assert start == (SC + bytes([0x65]) + IDR[1:17], True)  # header rebuilt: F|NRI of the indicator, type of the FU header
    assert middle == (IDR[17:33], False)
    assert end == (IDR[33:], False)
    assert start[0] + middle[0] + end[0] == SC + IDR


def test_fu_a_rebuilt_header_keeps_the_forbidden_bit_and_nal_ref_idc_of_the_indicator() -> None:
    # F=1, NRI=2 in the indicator (0b1_10_11100), type 1 in the header: the unit's header byte is 0b1_10_00001
    assert H264Depacketizer().push(bytes([0xDC, 0x81, 0xAA])) == (SC + bytes([0xC1, 0xAA]), True)


def test_fu_a_continuation_without_its_start_yields_nothing_until_the_next_start() -> None:
    d = H264Depacketizer()
    for orphan in (IDR_MIDDLE, IDR_END):
        with pytest.raises(ValueError, match="FU-A fragment without its start"):
            d.push(orphan)
    assert d.push(IDR_START) == (SC + bytes([0x65]) + IDR[1:17], True)
    assert d.push(IDR_MIDDLE) == (IDR[17:33], False)


def test_fu_a_ends_at_its_end_fragment_and_at_reset() -> None:
    d = H264Depacketizer()
    d.push(IDR_START)
    d.push(IDR_END)
    with pytest.raises(ValueError, match="without its start"):
        d.push(IDR_MIDDLE)
    d.push(IDR_START)
    d.reset()
    with pytest.raises(ValueError, match="without its start"):
        d.push(IDR_END)
    assert d.push(bytes([0x7C, 0xC5, 0x01])) == (SC + bytes([0x65, 0x01]), True)  # start and end in one fragment
    with pytest.raises(ValueError, match="without its start"):
        d.push(IDR_END)


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "empty H.264 payload"),
    (bytes([0x7C, 0x85]), "truncated FU-A"),
    (bytes([0x79, 0x00, 0x00, 0x01, 0x41]), "unsupported H.264 packet type 25"),   # STAP-B
    (bytes([0x7A, 0x00, 0x01, 0x41]), "unsupported H.264 packet type 26"),         # MTAP16
    (bytes([0x7D, 0x85, 0x00, 0x00, 0xAA]), "unsupported H.264 packet type 29"),   # FU-B
    (bytes([0x60, 0xAA]), "unsupported H.264 packet type 0"),
], ids=["empty", "short-fu-a", "stap-b", "mtap16", "fu-b", "type-0"])
def test_packets_outside_packetization_mode_1_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        H264Depacketizer().push(payload)


# --- the frame tap: one access unit per marker bit --------------------------------------------------------------


def test_marker_bit_ends_the_access_unit_with_its_first_and_last_arrival() -> None:
    t = Tapped()
    ts = 1_000_000
    head = t.feed((10.0, wire(500, ts, STAP_A)), (10.1, wire(501, ts, IDR_START)), (10.2, wire(502, ts, IDR_MIDDLE)))
    assert head == []  # nothing before the marker
    (frame,) = t.feed((10.3, wire(503, ts, IDR_END, marker=True)))
    assert frame == TapFrame(timestamp=ts, first_arrival=10.0, arrival=10.3, data=KEY_AU, packets=4, keyframe=True,
                             complete=True)
    (p_frame,) = t.feed((10.4, wire(504, ts + FRAME, SLICE, marker=True)))
    assert p_frame == TapFrame(timestamp=ts + FRAME, first_arrival=10.4, arrival=10.4, data=SC + SLICE, packets=1,
                               keyframe=False, complete=True)
    assert (t.tap.codec, t.tap.ssrc, t.tap.packets, t.tap.packets_lost) == ("H264", SSRC, 5, 0)
    assert t.tap.bytes == len(STAP_A + IDR_START + IDR_MIDDLE + IDR_END + SLICE)


def test_lost_middle_fragment_hands_over_the_frame_flagged_incomplete_and_not_a_keyframe() -> None:
    t = Tapped()
    (frame,) = t.feed((1.0, wire(7, 90_000, STAP_A)), (1.1, wire(8, 90_000, IDR_START)),
                      (1.3, wire(10, 90_000, IDR_END, marker=True)))  # 9, the middle fragment, is lost
    assert frame.data == SC + SPS + SC + PPS + SC + bytes([0x65]) + IDR[1:17] + IDR[33:]
    assert (frame.packets, frame.arrival, frame.complete, frame.keyframe) == (3, 1.3, False, False)
    assert (t.tap.packets_expected, t.tap.packets_lost) == (4, 1)
    (after,) = t.feed((1.4, wire(11, 93_000, SLICE, marker=True)))
    assert after.complete and after.data == SC + SLICE  # the loss ends with its frame


def test_lost_start_fragment_flags_the_frame_incomplete_even_when_a_later_unit_could_start_one() -> None:
    t = Tapped()
    # a two-slice keyframe: slice 1 in two FU-As (its start, seq 20, is lost), slice 2 a single NAL unit
    (frame,) = t.feed((2.1, wire(21, 180_000, IDR_A_END)), (2.2, wire(22, 180_000, IDR, marker=True)))
    assert frame.data == SC + IDR  # the orphan end fragment contributes nothing
    assert (frame.packets, frame.first_arrival, frame.arrival) == (2, 2.1, 2.2)
    assert not frame.complete and not frame.keyframe


def test_frame_of_orphan_fragments_still_ends_on_its_marker_and_the_next_frame_is_whole() -> None:
    t = Tapped()
    t.feed((3.0, wire(40, 270_000, SLICE, marker=True)))
    (broken,) = t.feed((3.2, wire(42, 273_000, IDR_MIDDLE)), (3.3, wire(43, 273_000, IDR_END, marker=True)))
    assert (broken.timestamp, broken.data, broken.packets, broken.arrival) == (273_000, b"", 2, 3.3)
    assert not broken.complete
    (whole,) = t.feed((3.4, wire(44, 276_000, IDR_START)), (3.5, wire(45, 276_000, IDR_END, marker=True)))
    assert whole.complete and whole.keyframe and whole.data == SC + bytes([0x65]) + IDR[1:17] + IDR[33:]


def test_lost_marker_packet_hands_the_frame_over_incomplete_when_the_next_timestamp_arrives() -> None:
    t = Tapped()
    assert t.feed((4.0, wire(60, 360_000, STAP_A)), (4.1, wire(61, 360_000, IDR_START))) == []
    # 62 (IDR_END, marker) is lost; 63 opens the next frame
    cut, after = t.feed((4.3, wire(63, 363_000, SLICE, marker=True)))
    assert (cut.timestamp, cut.data, cut.packets) == (360_000, SC + SPS + SC + PPS + SC + bytes([0x65]) + IDR[1:17], 2)
    assert cut.arrival == 4.1 and not cut.complete and not cut.keyframe  # arrival: its last packet, not the next one's
    assert (after.timestamp, after.data, after.complete, after.keyframe) == (363_000, SC + SLICE, True, False)


def test_a_frame_whose_first_packet_was_lost_is_incomplete_though_its_next_unit_starts_one() -> None:
    """H.264 units are whole NAL units: a keyframe whose SPS packet is lost still starts, to the depacketizer,
    with its PPS. The gap after the frame before (which ended on its marker) is this frame's."""
    t = Tapped()
    t.feed((9.0, wire(100, 900_000, SLICE, marker=True)))
    # 101 (SPS) lost
    (frame,) = t.feed((9.1, wire(102, 903_000, PPS)), (9.2, wire(103, 903_000, IDR, marker=True)))
    assert frame.data == SC + PPS + SC + IDR and not frame.complete and not frame.keyframe


def test_after_a_cut_frame_two_lost_packets_leave_the_next_frame_unproven() -> None:
    """The frame before lost its marker packet (cut by the next timestamp): one missing packet is that one, and
    the next frame is whole; two missing may include the next frame's head, so it is not called complete."""
    t = Tapped()
    t.feed((9.5, wire(200, 990_000, IDR_START)))
    # 201 (IDR_END, marker) and 202 (the next frame's SPS) lost
    cut, after = t.feed((9.7, wire(203, 993_000, PPS)), (9.8, wire(204, 993_000, IDR, marker=True)))
    assert not cut.complete and after.timestamp == 993_000 and not after.complete


def test_an_h264_keyframe_cut_by_another_codecs_packet_leaves_no_keyframe_behind() -> None:
    """An IDR frame loses its last packet and a VP8 packet (the same SSRC, a new timestamp) cuts it; after
    the VP8 frame, an H.264 slice frame is complete and no keyframe."""
    t = Tapped()
    (cut,) = t.feed((8.0, wire(300, 900_000, IDR_START)), (8.2, wire(302, 903_000, bytes([0x10, 0x01, 0x02]), pt=VP8_PT)))
    assert not cut.complete and not cut.keyframe
    (vp8,) = t.feed((8.3, wire(303, 903_000, bytes([0x10, 0x01, 0x03]), marker=True, pt=VP8_PT)))
    (after,) = t.feed((8.4, wire(304, 906_000, SLICE, marker=True)))
    assert (after.complete, after.keyframe, after.data) == (True, False, SC + SLICE)


def test_reordered_packet_inside_a_frame_is_counted_as_received_but_not_reassembled() -> None:
    t = Tapped()
    (frame,) = t.feed((5.0, wire(80, 450_000, IDR_START)), (5.1, wire(82, 450_000, IDR_END, marker=True)))
    assert not frame.complete and frame.data == SC + bytes([0x65]) + IDR[1:17] + IDR[33:]
    assert t.feed((5.2, wire(81, 450_000, IDR_MIDDLE))) == []  # late: no frame, no bytes spliced anywhere
    assert (t.tap.packets, t.tap.packets_expected, t.tap.packets_lost) == (3, 3, 0)
    (next_frame,) = t.feed((5.3, wire(83, 453_000, SLICE, marker=True)))
    assert next_frame.complete and next_frame.data == SC + SLICE and next_frame.first_arrival == 5.3


def test_duplicate_of_a_finished_frame_does_not_disturb_the_frame_in_progress() -> None:
    t = Tapped()
    t.feed((6.0, wire(90, 540_000, SLICE, marker=True)))
    (frame,) = t.feed((6.1, wire(91, 543_000, IDR_START)), (6.15, wire(90, 540_000, SLICE, marker=True)),
                      (6.2, wire(92, 543_000, IDR_END, marker=True)))
    assert frame.complete and frame.keyframe and frame.timestamp == 543_000 and frame.packets == 2
    assert (t.tap.packets, t.tap.packets_expected, t.tap.packets_lost) == (4, 3, 0)


def test_sequence_numbers_wrap_at_65535_without_a_false_gap() -> None:
    t = Tapped()
    (frame,) = t.feed((7.0, wire(65534, 630_000, IDR_START)), (7.1, wire(65535, 630_000, IDR_MIDDLE)),
                      (7.2, wire(0, 630_000, IDR_END, marker=True)))
    assert frame.complete and frame.keyframe and frame.data == SC + IDR
    (after,) = t.feed((7.3, wire(1, 633_000, SLICE, marker=True)))
    assert after.complete
    assert (t.tap.packets_expected, t.tap.packets_lost) == (4, 0)
    assert t.feed((7.4, wire(65535, 630_000, IDR_MIDDLE))) == []  # from before the wrap: late, not a jump ahead
    assert t.tap.packets_expected == 4


def test_loss_across_the_wrap_is_seen() -> None:
    t = Tapped()
    (frame,) = t.feed((8.0, wire(65534, 720_000, IDR_START)), (8.2, wire(0, 720_000, IDR_END, marker=True)))
    assert not frame.complete and frame.data == SC + bytes([0x65]) + IDR[1:17] + IDR[33:]
    assert (t.tap.packets_expected, t.tap.packets_lost) == (3, 1)


def test_timestamps_are_unwrapped_past_2_to_the_32() -> None:
    t = Tapped()
    top = 2**32 - FRAME
    t.feed((9.0, wire(5, top, SLICE, marker=True)), (9.1, wire(6, 0, STAP_A)), (9.15, wire(7, 0, IDR, marker=True)),
           (9.2, wire(8, FRAME, SLICE, marker=True)))
    assert [f.timestamp for f in t.frames] == [top, 2**32, 2**32 + FRAME]
    assert [f.data for f in t.frames] == [SC + SLICE, KEY_AU, SC + SLICE]
    assert all(f.complete for f in t.frames)
    # anything less than half the 32-bit range ahead is ahead (a long pause), a step back is back
    far = FRAME + 2**31 - 1
    t.feed((9.3, wire(9, far, SLICE, marker=True)), (9.4, wire(10, far - FRAME, SLICE, marker=True)))
    assert [f.timestamp for f in t.frames[3:]] == [2**32 + far, 2**32 + far - FRAME]


def test_retransmissions_other_ssrcs_and_unknown_payload_types_are_left_alone() -> None:
    t = Tapped()
    assert t.feed((1.0, wire(1, 0, SLICE, marker=True, pt=RTX_PT)), (1.1, wire(2, 0, SLICE, marker=True, pt=111))) == []
    assert (t.tap.packets, t.tap.codec, t.tap.ssrc, t.tap.unsupported) == (0, None, None, None)
    (frame,) = t.feed((1.2, wire(300, 0, SLICE, marker=True)), (1.3, wire(301, FRAME, SLICE, marker=True, ssrc=SSRC + 1)))
    assert frame.timestamp == 0 and (t.tap.packets, t.tap.ssrc, len(t.frames)) == (1, SSRC, 1)


def test_another_codec_is_reported_unsupported_not_guessed_at() -> None:
    t = Tapped()
    assert t.feed((1.0, wire(1, 0, bytes([0x90, 0x80, 0x00, 0x01]), marker=True, pt=VP9_PT))) == []
    assert (t.tap.unsupported, t.tap.codec, t.tap.packets) == ("VP9", None, 0)


def test_vp8_frame_is_reassembled_from_its_partitions_without_descriptors() -> None:
    t = Tapped()
    # descriptor 0x10: S=1, partition 0 (a frame's first packet); 0x00: a continuation. 0x9C: bit 0 clear, a keyframe
    (key,) = t.feed((1.0, wire(1, 0, bytes([0x10, 0x9C, 0x01, 0x2A]), pt=VP8_PT)),
                    (1.1, wire(2, 0, bytes([0x00, 0x03, 0x04]), marker=True, pt=VP8_PT)))
    assert (key.data, key.keyframe, key.complete, key.packets) == (bytes([0x9C, 0x01, 0x2A, 0x03, 0x04]), True, True, 2)
    (inter,) = t.feed((1.2, wire(3, FRAME, bytes([0x10, 0x31, 0x05]), marker=True, pt=VP8_PT)))
    assert (inter.data, inter.keyframe, t.tap.codec) == (bytes([0x31, 0x05]), False, "VP8")
    # 4, the first packet of the next keyframe, is lost: its continuation cannot start a frame
    (headless,) = t.feed((1.4, wire(5, 2 * FRAME, bytes([0x00, 0x07]), marker=True, pt=VP8_PT)))
    assert (headless.data, headless.complete, headless.keyframe) == (bytes([0x07]), False, False)
    # 6, a whole frame, is lost: the keyframe after it proves its own start, so it is whole
    (after_loss,) = t.feed((1.6, wire(7, 4 * FRAME, bytes([0x10, 0x9C, 0x01, 0x2A]), marker=True, pt=VP8_PT)))
    assert (after_loss.complete, after_loss.keyframe) == (True, True)


# --- a real encoder's stream, packetized by aiortc --------------------------------------------------------------


def x264_access_units(count: int) -> list[bytes]:
    """``count`` access units of noise from libx264 (so the keyframe needs FU-A), Annex B as the encoder wrote them."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 160, 96, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.options = {"tune": "zerolatency", "preset": "ultrafast", "crf": "10"}
    rng = np.random.default_rng(0)
    units: list[bytes] = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8), format="rgb24")
        frame.pts = i
        units += [bytes(p) for p in codec.encode(frame.reformat(format="yuv420p"))]
    units += [bytes(p) for p in codec.encode(None)]
    return units


def test_x264_stream_packetized_by_aiortc_comes_back_unit_for_unit() -> None:
    units = x264_access_units(3)
    t = Tapped()
    encoder, seq, rng = H264Encoder(), 65530, random.Random(0)  # crosses the sequence-number wrap
    kinds: set[int] = set()
    for i, unit in enumerate(units):
        packet = av.Packet(unit)
        packet.pts, packet.time_base = i, Fraction(1, 30)
        payloads, ts = encoder.pack(packet)
        kinds |= {p[0] & 0x1F for p in payloads}
        for j, payload in enumerate(payloads):
            t.feed((i + rng.random() / 100, wire(seq & 0xFFFF, ts, payload, marker=j == len(payloads) - 1)))
            seq += 1
    assert {24, 28} <= kinds  # the fixture did exercise STAP-A and FU-A
    # each unit as the encoder wrote it, re-written with four-byte start codes
    expected = [b"".join(SC + nal for nal in re.split(b"\x00\x00\x00?\x01", unit) if nal) for unit in units]
    assert [f.data for f in t.frames] == expected
    assert [f.timestamp for f in t.frames] == [i * FRAME for i in range(len(units))]
    assert all(f.complete for f in t.frames) and [f.keyframe for f in t.frames] == [True] + [False] * (len(units) - 1)


# --- a keyframe told from its units' types --------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@example(frames=[[(7, 3, b"\x01" * 10), (8, 3, b"\x02" * 4), (5, 3, b"\x03" * 2500)], [(1, 2, b"\x04" * 2500)]])  # FU-As
@given(frames=st.lists(st.lists(st.tuples(st.sampled_from([1, 5, 6, 7, 8, 9]), st.integers(1, 3), st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\x00", b"\x01")),   # single units and STAP-As
    st.integers(1300, 3000).map(lambda n: bytes([0x02]) * n))),                       # FU-As
    min_size=1, max_size=5), min_size=1, max_size=6))
def test_an_h264_frame_is_a_keyframe_when_one_of_its_nal_units_is_an_idr_slice(frames) -> None:
    """Access units of NAL units of the types drawn (no zero byte in their bodies: no start code inside one),
    packetized by aiortc's own H.264 encoder (single units, STAP-A, FU-A), one frame after another: each frame
    handed over is complete, holds the units, and is a keyframe exactly when a unit drawn is an IDR slice."""
    t, seq, got = Tapped(), 100, []
    for n, units in enumerate(frames):
        access_unit = b"".join(SC + bytes([nri << 5 | kind]) + body for kind, nri, body in units)
        packet = av.Packet(access_unit)
        packet.pts, packet.time_base = n * FRAME, Fraction(1, 90_000)
        payloads = H264Encoder().pack(packet)[0]
        for i, payload in enumerate(payloads):
            got += t.feed((float(n), wire(seq, n * FRAME, payload, marker=i == len(payloads) - 1)))
            seq += 1
    assert [(f.complete, f.keyframe, f.data) for f in got] == [
        (True, any(kind == 5 for kind, _, _ in units), b"".join(SC + bytes([nri << 5 | kind]) + body for kind, nri, body in units))
        for units in frames]
