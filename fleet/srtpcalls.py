"""SRTP for the probe's lean RTP path (fleet.leanrtp): libsrtp called on a pylibsrtp session's own state.

pylibsrtp's ``Session.protect`` / ``unprotect`` check their argument, allocate a length cell and go through a
generic wrapper on every call; per packet, at 30 fps both ways, that is a measurable share of a probe session.
``SrtpCalls`` makes the same libsrtp calls on the same session state and buffer, with the cell allocated once.

Where the optional C extension ``fleet._rtpnative`` was built (``NATIVE``), the per-packet work goes there
instead: a frame's packets built, protected and sent in one call (``SrtpCalls.send_frame``, sendmmsg), a
datagram unprotected and parsed in one (``SrtpCalls.read``), on the same session state through libsrtp's own
functions, whose addresses cffi gives from pylibsrtp's binding. ``FLEET_RTP_NATIVE=0`` in the environment
keeps the Python path (the benches compare the two in one run).
The private names used here are checked on import by ``fleet.webrtc`` (``check_private_api``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from struct import Struct
from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi as srtp_ffi  # type: ignore[import-not-found]
from pylibsrtp._binding import lib as srtp_lib

import fleet.webrtc  # noqa: F401 - its import checks the private API used here

try:
    from fleet import _rtpnative
except ImportError:  # built without a C compiler: the Python path
    _rtpnative = None  # type: ignore[assignment]

__all__ = ["NATIVE", "RtpView", "SrtpCalls", "native_enabled", "parse_rtp", "srtp_calls"]

RTP_HEADER = Struct("!BBHLL")


def native_enabled() -> bool:
    """Whether the per-packet work goes through ``fleet._rtpnative``: built, and not turned off by
    ``FLEET_RTP_NATIVE=0``."""
    return _rtpnative is not None and os.environ.get("FLEET_RTP_NATIVE", "1") != "0"


NATIVE = native_enabled()
_PROTECT = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_protect")))
_UNPROTECT = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_unprotect")))


@dataclass(slots=True)
class RtpView:
    """The fields of an RTP packet the probe reads (``aiortc.rtp.RtpPacket``'s names), its payload a slice
    (``fleet._rtpnative.RtpView`` has the same names)."""

    payload_type: int
    marker: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpView | None:
    """An RTP packet's fixed header and payload (RFC 3550 5.1; CSRCs, a header extension and padding skipped);
    None when it is not one."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
    pos, end = 12 + 4 * (b0 & 0x0F), len(data)
    if b0 & 0x10:
        if end < pos + 4:
            return None
        pos += 4 + 4 * int.from_bytes(data[pos + 2:pos + 4], "big")
    if b0 & 0x20:
        end -= data[-1]
    if pos > end:
        return None
    return RtpView(b1 & 0x7F, b1 >> 7, seq, ts, ssrc, data[pos:end])


class SrtpCalls:
    """``protect`` and ``unprotect`` of one pylibsrtp ``Session`` (aiortc's, which also protects its RTCP), called
    on the session's own C buffer without the wrapper's per-call checks and allocation: the same libsrtp calls on
    the same state. A packet too long for the buffer goes through the wrapper, which refuses it."""

    def __init__(self, session: pylibsrtp.Session) -> None:
        self.session = session
        self.srtp = session._srtp[0]
        self.cdata, self.buffer = session._cdata, session._buffer
        self.size = srtp_ffi.new("int *")
        self.protect_max = len(self.buffer) - pylibsrtp.SRTP_MAX_TRAILER_LEN
        self.address = int(srtp_ffi.cast("uintptr_t", self.srtp))
        self.native = native_enabled()

    def read(self, data: bytes) -> RtpView | None:
        """A received SRTP packet unprotected and parsed (an ``RtpView``, or the native one), or None when
        libsrtp refuses it, it is too long, or it is no RTP packet: aiortc drops those."""
        if self.native:
            return _rtpnative.unprotect_parse(_UNPROTECT, self.address, data)
        try:
            return parse_rtp(self.unprotect(data))
        except (pylibsrtp.Error, ValueError):
            return None

    def send_frame(self, fd: int, address: Any, head: tuple[int, int, int, int, int], ext_block: bytes,
                   payloads: Sequence[bytes], history: dict[int, bytes],
                   history_size: int) -> tuple[int, int, list[bytes], pylibsrtp.Error | None]:
        """One frame's packets through ``fleet._rtpnative.send_frame``: built, kept in ``history``, protected
        and sent on the datagram socket ``fd`` to ``address`` (``head``: first byte, payload type, first
        sequence number, timestamp, SSRC). Returns the packets protected (the first ones), their payloads'
        bytes, the protected packets the socket did not take (for the caller's transport to send), and the
        error that stopped the protection, if one did."""
        head0, payload_type, seq, timestamp, ssrc = head
        sent, octets, status, unsent = _rtpnative.send_frame(
            fd, address[0], address[1], _PROTECT, self.address, head0, payload_type, seq, timestamp, ssrc, ext_block,
            payloads, history, history_size)
        error = None
        if status:
            error = pylibsrtp.Error(pylibsrtp.ERRORS[status] if 0 <= status < len(pylibsrtp.ERRORS) else f"libsrtp status {status}")
        return sent, octets, unsent, error

    def protect(self, data: bytes) -> bytes:
        n = len(data)
        if n > self.protect_max:
            return self.session.protect(data)
        return self._call(data, n, srtp_lib.srtp_protect)

    def unprotect(self, data: bytes) -> bytes:
        n = len(data)
        if n > len(self.buffer):
            return self.session.unprotect(data)
        return self._call(data, n, srtp_lib.srtp_unprotect)

    def _call(self, data: bytes, n: int, func: Any) -> bytes:
        self.buffer[0:n] = data
        self.size[0] = n
        status = func(self.srtp, self.cdata, self.size)
        if status != srtp_lib.srtp_err_status_ok:
            raise pylibsrtp.Error(pylibsrtp.ERRORS[status])
        out: bytes = self.buffer[0 : self.size[0]]
        return out


def srtp_calls(kept: SrtpCalls | None, session: pylibsrtp.Session | None) -> SrtpCalls | None:
    """``kept`` while it is still for ``session`` (aiortc keys a transport's sessions once), else anew."""
    if session is None:
        return None
    return kept if kept is not None and kept.session is session else SrtpCalls(session)
