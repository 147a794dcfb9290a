"""SRTP for the probe's lean RTP path (fleet.leanrtp): libsrtp called on a pylibsrtp session's own buffer.

pylibsrtp's ``Session.protect`` / ``unprotect`` check their argument, allocate a length cell and go through a
generic wrapper on every call; per packet, at 30 fps both ways, that is a measurable share of a probe session.
``SrtpCalls`` makes the same libsrtp calls on the same session state and buffer, with the cell allocated once.
The private names used here are checked on import by ``fleet.webrtc`` (``check_private_api``).
"""

from __future__ import annotations

from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi as srtp_ffi  # type: ignore[import-not-found]
from pylibsrtp._binding import lib as srtp_lib

import fleet.webrtc  # noqa: F401 - its import checks the private API used here

__all__ = ["SrtpCalls", "srtp_calls"]


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
