"""When a datagram reached the tester's socket, not when its event loop got to it.

An output frame is timed by its last packet. Stamped with ``time.monotonic()`` when the event loop hands
the packet over, every stall of the tester's own loop (a garbage collection, a burst of other sessions'
packets, a decode) makes the frame look late: latency, jitter and freezes then carry the tester's noise.
Linux stamps every datagram as it enters the receive path once a socket asks for it (``SIOCGSTAMPNS``:
the stamp of the datagram last read from the socket, socket(7)), and both uvloop and asyncio call
``datagram_received`` right after reading each datagram, before the next, so asking in that call gives
that datagram's stamp. The kernel's clock is the wall clock; it is moved onto ``time.monotonic()`` by the
two clocks' offset read at the same moment (a wall-clock step between the datagram's arrival and the call
is the one error left).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SIOCGSTAMPNS", "arrival_clock"]

SIOCGSTAMPNS = 0x8907           # linux/sockios.h: the last datagram's receive time as a struct timespec
_TIMESPEC = struct.Struct("@qq")  # tv_sec, tv_nsec: 64-bit on 64-bit Linux, the one platform this is used on
_SUPPORTED = sys.platform.startswith("linux") and struct.calcsize("P") == 8


def _turn_socket(transport: Any) -> Any:
    """The socket of aioice's TURN client under a relayed ``transport``, when it is a datagram one: it reads
    the server's ChannelData (or Data indication) datagrams and hands each payload on in the same call, so the
    stamp of the datagram it read last is the payload's. None for anything else (TURN over TCP or TLS: a
    stream carries no datagram stamps)."""
    inner = getattr(transport, "_TurnTransport__inner_protocol", None)  # checked by fleet.webrtc
    outer = getattr(inner, "transport", None)
    sock = outer.get_extra_info("socket") if outer is not None else None
    return sock if getattr(sock, "type", None) == socket.SOCK_DGRAM else None


def arrival_clock(transport: Any) -> Callable[[], float | None] | None:
    """A function that gives, on ``time.monotonic()``'s clock, when the datagram just read from
    ``transport``'s socket arrived; call it inside ``datagram_received``; it gives None when the kernel
    does not answer (the socket closed under the call). Stamping starts here: a datagram read before is
    given the time of the call (the kernel's own answer then), and so is one that waited in the socket while
    stamping came on, unless another socket on the machine had it on already (the kernel stamps on arrival
    only then); the probe asks before any media. None instead of the function where the kernel cannot tell:
    not 64-bit Linux, a transport without a datagram socket (of its own, or its TURN client's), or a socket
    that refuses the first ask."""
    if not _SUPPORTED:
        return None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        sock = _turn_socket(transport)
    try:
        fd = sock.fileno() if sock is not None else -1
    except (AttributeError, OSError):
        fd = -1
    if fd < 0:
        return None
    buffer = bytearray(_TIMESPEC.size)
    try:  # the first ask turns stamping on for the socket; ENOENT: no datagram read from it yet
        fcntl.ioctl(fd, SIOCGSTAMPNS, buffer)
    except OSError as e:
        if e.errno != errno.ENOENT:
            return None
    unpack, ioctl, monotonic, wall = _TIMESPEC.unpack, fcntl.ioctl, time.monotonic, time.time

    def arrival() -> float | None:
        try:
            ioctl(fd, SIOCGSTAMPNS, buffer)
        except OSError:  # the socket closed under the call (or, outside datagram_received, nothing read yet)
            return None
        now = monotonic()
        seconds, nanoseconds = unpack(buffer)
        stamp = seconds + nanoseconds * 1e-9 - wall() + now
        return stamp if stamp <= now else now  # never later than its reading (a wall-clock step back)

    return arrival
