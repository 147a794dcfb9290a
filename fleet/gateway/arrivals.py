"""When each of the publisher's RTP packets reached the gateway's socket: the truth's input times.

aiortc hands the gateway a packet after its queue, its DTLS transport's loop and SRTP; a gateway whose loop is
busy handles it later than it arrived, and a frame's residence counted from then is short by that wait (the
probe, which times its output by its socket, would then look wrong by it). Linux stamps a datagram as it
arrives once its socket has asked for a stamp (``SIOCGSTAMP``, socket(7): the receive time of the datagram
last read), and the event loop calls the ICE pair's ``datagram_received`` right after reading each datagram,
so a stamp asked there is that datagram's. The stamps are kept by SSRC and sequence number (in the clear in
an SRTP packet's header) until the packet is handled. Written apart from the probe's own socket stamps, with
another call (a ``timeval``): the truth shares no code with what it judges.
"""

from __future__ import annotations

import errno
import fcntl
import struct
import sys
import time
from typing import Any

__all__ = ["SocketArrivals"]

SIOCGSTAMP = 0x8906                 # linux/sockios.h: the last datagram's receive time, a struct timeval
_TIMEVAL = struct.Struct("@ll")     # tv_sec, tv_usec: longs (64-bit on the platforms this runs on)
_WORKS = sys.platform.startswith("linux") and _TIMEVAL.size == 16
KEPT = 4096                         # packets between arrival and handling a stamp outlives


class SocketArrivals:
    """Arrival stamps of one connection's RTP packets, taken by hooking its nominated ICE pair (``watch``)."""

    def __init__(self) -> None:
        self._keys: list[tuple[int, int] | None] = [None] * KEPT
        self._times = [0.0] * KEPT
        self.watching = False

    def watch(self, connection: Any) -> bool:
        """Stamp every RTP datagram the ICE ``connection``'s nominated pair reads from now on; False while no
        pair is nominated, or where the kernel cannot tell (then ``arrival`` never knows)."""
        pair = connection._nominated.get(1)
        if pair is None:
            return False
        self.watching = True
        sock = pair.protocol.transport.get_extra_info("socket") if _WORKS else None
        fd, cell = -1, bytearray(_TIMEVAL.size)
        try:
            fd = sock.fileno() if sock is not None else -1
            if fd >= 0:
                fcntl.ioctl(fd, SIOCGSTAMP, cell)  # the first ask turns the socket's stamps on
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: on, with no datagram read yet; anything else: no stamps here
                fd = -1
        if fd < 0:
            return True
        inner = pair.protocol.datagram_received

        def datagram_received(data: bytes, addr: Any) -> None:
            if len(data) >= 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 223:  # RTP, not RTCP
                try:
                    fcntl.ioctl(fd, SIOCGSTAMP, cell)
                except OSError:
                    pass
                else:
                    seconds, micros = _TIMEVAL.unpack(cell)
                    now = time.monotonic()
                    at = min(now, seconds + micros / 1e6 - time.time() + now)
                    ssrc, seq = int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big")
                    self._keys[seq % KEPT], self._times[seq % KEPT] = (ssrc, seq), at
            inner(data, addr)

        pair.protocol.datagram_received = datagram_received
        return True

    def arrival(self, ssrc: int, seq: int) -> float | None:
        """When the packet reached the socket (on ``time.monotonic()``'s clock), or None when not stamped."""
        i = seq % KEPT
        return self._times[i] if self._keys[i] == (ssrc, seq) else None
