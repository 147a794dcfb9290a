"""SRTP for the probe's lean RTP path (fleet.leanrtp): libsrtp called on a pylibsrtp session's own state.

pylibsrtp's ``Session.protect`` / ``unprotect`` check their argument, allocate a length cell and go through a
generic wrapper on every call; per packet, at 30 fps both ways, that is a measurable share of a probe session.
``SrtpCalls`` makes the same libsrtp calls on the same session state and buffer, with the cell allocated once.

Where the optional C extension ``fleet._rtpnative`` was built and can be used here (``native_enabled``), the
per-packet work goes there instead: a frame's packets built, protected and sent in one call
(``SrtpCalls.send_frame``, sendmmsg), a datagram unprotected and parsed in one (``SrtpCalls.read``) or
unprotected, parsed, counted and reassembled by the native frame tap in one (``SrtpCalls.take``), on the
same session state through libsrtp's own functions, whose addresses cffi gives from pylibsrtp's binding (their C
signature checked first). ``FLEET_RTP_NATIVE=0`` in the environment keeps the Python path (the benches compare
the two in one run). One difference no packetizer here can reach: a frame with a packet longer than SRTP's
buffer allows is refused whole by the native call, where the Python path sends the packets before it.
The private names used here are checked on import by ``fleet.webrtc`` (``check_private_api``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
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

__all__ = ["CODEC_H264", "CODEC_NAMES", "CODEC_VP8", "MARKER", "NACK_DUE", "NATIVE_UNUSABLE", "TAKEN", "TAP_CODECS",
           "RtpView", "SrtpCalls", "is_native_tap", "native_enabled", "native_tap", "parse_rtp", "srtp_calls"]

RTP_HEADER = Struct("!BBHLL")
NATIVE_API = 4  # the interface of fleet/_rtpnative.c this module calls (its API constant)
LIBSRTP_CALL = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"  # libsrtp 2's srtp_protect, srtp_unprotect
_OFF = ("0", "false", "no", "off")
CODEC_VP8, CODEC_H264 = 1, 2  # the frame tap's codecs (fleet.rtp.TapCore; fleet/_rtpnative.c's CODEC_ constants)
TAP_CODECS = {"VP8": CODEC_VP8, "H264": CODEC_H264}
CODEC_NAMES = {code: name for name, code in TAP_CODECS.items()}
TAKEN, MARKER, NACK_DUE = 1, 2, 4  # what the native tap's take says of a packet (fleet/_rtpnative.c's constants)


def _native_unusable() -> str | None:
    """Why ``fleet._rtpnative`` cannot be used here, or None: not built, a build of another interface (a stale
    one left by an earlier install), or a pylibsrtp whose libsrtp functions or longest trailer are not the ones
    it was written for (it would corrupt memory, not fail). A session's buffer is checked as it is wrapped."""
    if _rtpnative is None:
        return "fleet._rtpnative was not built (no C compiler or Python headers at install: pip install -v -e . says why)"
    api = getattr(_rtpnative, "API", None)
    if api != NATIVE_API:
        return f"fleet._rtpnative is a stale build (interface {api}, not {NATIVE_API}): reinstall (pip install -e .)"
    if (_rtpnative.CODEC_VP8, _rtpnative.CODEC_H264, _rtpnative.TAKEN, _rtpnative.MARKER, _rtpnative.NACK_DUE) != \
            (CODEC_VP8, CODEC_H264, TAKEN, MARKER, NACK_DUE):
        return "fleet._rtpnative's constants are not this module's: reinstall (pip install -e .)"
    calls = {name: srtp_ffi.typeof(srtp_ffi.addressof(srtp_lib, name)).cname for name in ("srtp_protect", "srtp_unprotect")}
    if any(cname != LIBSRTP_CALL for cname in calls.values()):
        return f"pylibsrtp {pylibsrtp.__version__}'s libsrtp calls are {calls}, not libsrtp 2's {LIBSRTP_CALL}"
    if pylibsrtp.SRTP_MAX_TRAILER_LEN != _rtpnative.TRAILER_MAX:
        return (f"pylibsrtp {pylibsrtp.__version__}'s longest SRTP trailer is {pylibsrtp.SRTP_MAX_TRAILER_LEN} bytes, "
                f"not {_rtpnative.TRAILER_MAX}")
    return None


def native_enabled() -> bool:
    """Whether the per-packet work goes through ``fleet._rtpnative``: usable here (``NATIVE_UNUSABLE``), and
    not turned off by ``FLEET_RTP_NATIVE`` (0, false, no or off)."""
    return NATIVE_UNUSABLE is None and os.environ.get("FLEET_RTP_NATIVE", "1").strip().lower() not in _OFF


def native_tap(finish: Any) -> Any:
    """A native frame tap (``fleet._rtpnative.Tap``, fleet.rtp.TapCore's twin) where ``native_enabled``, else None."""
    return _rtpnative.Tap(finish) if native_enabled() else None


def native_plane_mean() -> Any:
    """``fleet._rtpnative.plane_mean`` (a decoded plane's mean on a subsampled grid: fleet.probe.planes) where
    ``native_enabled``, else None."""
    return _rtpnative.plane_mean if native_enabled() else None


def is_native_tap(core: Any) -> bool:
    return _rtpnative is not None and isinstance(core, _rtpnative.Tap)


NATIVE_UNUSABLE = _native_unusable()
if NATIVE_UNUSABLE is not None:
    logging.getLogger(__name__).warning("the probe's per-packet RTP work stays in Python: %s", NATIVE_UNUSABLE)
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
        # the native calls keep pylibsrtp's limits: its buffer is the longest packet either path takes
        self.native = native_enabled() and len(self.buffer) == _rtpnative.BUFFER

    def read(self, data: bytes) -> RtpView | None:
        """A received SRTP packet unprotected and parsed (an ``RtpView``, or the native one), or None when
        libsrtp refuses it, it is too long, or it is no RTP packet: aiortc drops those."""
        if self.native:
            return _rtpnative.unprotect_parse(_UNPROTECT, self.address, data)
        try:
            return parse_rtp(self.unprotect(data))
        except (pylibsrtp.Error, ValueError):
            return None

    def take(self, core: Any, data: bytes, codec: int, arrival: float | None) -> int:
        """A received SRTP packet of ``codec`` unprotected, parsed, handed to the native frame tap ``core`` and
        counted for reports on its state (``fleet._rtpnative.Tap.take``: what ``read``, ``core.packet`` and the
        receiver's duties do, in one call): 0 when dropped as ``read`` drops, else ``TAKEN`` with ``MARKER`` and
        ``NACK_DUE`` as they apply. Only where this session is native (``native``)."""
        return int(core.take(_UNPROTECT, self.address, data, codec, arrival))

    def taker(self, core: Any) -> Callable[[bytes, int, float | None], int]:
        """``take`` on ``core`` as one native call, for a caller that takes every packet of a source (the
        session's SRTP state and libsrtp's function bound in: no Python frame per packet)."""
        return partial(core.take, _UNPROTECT, self.address)

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
        return sent, octets, unsent, _srtp_error(status) if status else None

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
            raise _srtp_error(status)
        out: bytes = self.buffer[0 : self.size[0]]
        return out


def _srtp_error(status: int) -> pylibsrtp.Error:
    """libsrtp's status as pylibsrtp's own error says it."""
    return pylibsrtp.Error(pylibsrtp.ERRORS[status] if 0 <= status < len(pylibsrtp.ERRORS) else f"libsrtp status {status}")


def srtp_calls(kept: SrtpCalls | None, session: pylibsrtp.Session | None) -> SrtpCalls | None:
    """``kept`` while it is still for ``session`` (aiortc keys a transport's sessions once), else anew."""
    if session is None:
        return None
    return kept if kept is not None and kept.session is session else SrtpCalls(session)
