"""What aiortc's receiver must still do with each packet the probe's lean receive path takes (fleet.leanrtp):
keep the source active, count the packet for receiver reports (``StreamStatistics``) and find missing ones for
NACKs (``NackGenerator``).

``receiver_duties`` does them in Python, on aiortc's own objects. Where the frame tap is native
(``fleet._rtpnative.Tap``), its ``take`` does the counting and the NACK generator's step for the next packet
in order in the same call that unprotects and reassembles the packet, on state the tap keeps:
``NativeStreamStatistics`` and ``NativeNack`` are aiortc's classes with their attributes on that state, so
aiortc's receiver reports, ``getStats`` and the NACK generator's own ``add`` read and write the very numbers
the native call keeps (tests/test_tap_native.py judges them against aiortc's, packet by packet).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, clock
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import unwrap_rtx

__all__ = ["NativeNack", "NativeStreamStatistics", "nack_add", "receiver_duties"]

_P = "_RTCRtpReceiver__"


def receiver_duties(receiver: RTCRtpReceiver) -> Callable[..., Any]:
    """What aiortc's receiver must still do with a packet when nothing is decoded from its frames: keep the
    source active (its time read once per frame, at the marker: ``getSynchronizationSources`` looks 10 s back)
    and count the packet for receiver reports; returns whether packets are missing (a NACK is due) once the
    packet is a media one (a retransmission unwrapped; ``media``: the caller knows it is no retransmission)."""
    active: dict[int, Any] = getattr(receiver, _P + "active_ssrc")
    codecs: dict[int, Any] = getattr(receiver, _P + "codecs")
    streams: dict[int, StreamStatistics] = getattr(receiver, _P + "remote_streams")
    rtx_ssrc: dict[int, int] = getattr(receiver, _P + "rtx_ssrc")
    nack = getattr(receiver, _P + "nack_generator")

    def duties(packet: Any, media: bool = False) -> Any:
        """The media packet to NACK against, or None."""
        if not receiver._enabled:
            return None
        if packet.marker or packet.ssrc not in active:
            active[packet.ssrc] = clock.current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return None
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if not media and codec.name.lower() == "rtx":
            original = rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original is None or len(packet.payload) < 2 or not isinstance(apt, int) or apt not in codecs:
                return None
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original)
        return packet if nack is not None and nack_add(nack, packet) else None

    return duties


def nack_add(nack: NackGenerator, packet: Any) -> bool:
    """``nack.add(packet)``: marks the packet received, returns whether packets are missing. The next packet in
    order with none missing (most packets) moves the generator on as ``add`` would, without its calls."""
    seq = packet.sequence_number
    if not nack.missing and nack.max_seq is not None and seq == (nack.max_seq + 1) & 0xFFFF:
        nack.max_seq = seq
        return False
    return nack.add(packet)


def _on_core(name: str, has: str | None = None) -> property:
    """An attribute kept on the native tap's member ``name``; None where its flag ``has`` is clear."""

    def get(self: Any) -> Any:
        core = self._core
        return None if has is not None and not getattr(core, has) else getattr(core, name)

    def put(self: Any, value: Any) -> None:
        core = self._core
        if has is not None:
            setattr(core, has, value is not None)
        if value is not None:
            setattr(core, name, value)

    return property(get, put)


class NativeStreamStatistics(StreamStatistics):
    """aiortc's ``StreamStatistics`` whose counters are a native tap's (``take`` and ``stats_add`` count)."""

    base_seq = _on_core("base_seq", "has_base")
    max_seq = _on_core("max_seq", "has_max")
    cycles = _on_core("cycles")
    packets_received = _on_core("received")
    _jitter_q4 = _on_core("jitter_q4")
    _last_arrival = _on_core("last_arrival", "has_last")
    _last_timestamp = _on_core("last_timestamp", "has_last")
    _clockrate = _on_core("clockrate")

    def __init__(self, core: Any, clockrate: int, taken_over: StreamStatistics | None = None) -> None:
        """``taken_over``: the statistics aiortc kept for the source so far, carried on. Making one sets the
        tap's counters to ``taken_over``'s, or to none counted: one tap, one source's statistics at a time."""
        self._core = core
        super().__init__(clockrate)
        if taken_over is not None:
            for name in ("base_seq", "max_seq", "cycles", "packets_received", "_jitter_q4", "_last_arrival",
                         "_last_timestamp", "_expected_prior", "_received_prior"):
                setattr(self, name, getattr(taken_over, name))

    def add(self, packet: Any) -> None:
        self._core.stats_add(packet.sequence_number, packet.timestamp, time.time())


class NativeNack(NackGenerator):
    """aiortc's ``NackGenerator`` whose highest sequence number and missing set are a native tap's."""

    max_seq = _on_core("nack_max", "nack_has")
    missing = property(lambda self: self._core.missing, lambda self, value: setattr(self._core, "missing", value))

    def __init__(self, core: Any, taken_over: NackGenerator | None = None) -> None:
        self._core = core
        super().__init__()
        if taken_over is not None:
            self.max_seq, self.missing = taken_over.max_seq, set(taken_over.missing)
