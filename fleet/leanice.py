"""The lean RTP path's hooks on aioice's ICE connection: datagrams without aioice's STUN attempt, and SRTCP
handled as it arrives.

aiortc reads every datagram of a peer connection through aioice's queue and its DTLS transport's loop (a
coroutine woken per datagram), RTCP included: the reports, REMB and keyframe requests a gateway sends each
session's two connections, several a second, cost a probe about as much as its media's own receive path
(measured, ``bench/probe_profile.py``). ``rtcp_now`` does what that loop does with an SRTCP datagram (aiortc's
``RTCDtlsTransport._handle_rtcp_data`` on the packet unprotected by the transport's own session: the same
parse, routing and handlers), in the call that received it, whenever nothing older waits in the queue (so
nothing is overtaken); ``lean_rtcp`` gives a sending connection that path (the receiving one has it through
``fleet.leanrtp``). What differs: the DTLS transport's own byte and packet counters leave these datagrams
out, as they leave out the lean path's media; a handler that raises is logged and the transport goes on,
where aiortc's loop would end with it; and until aiortc's loop marks its handshake done (its first read after
the DTLS handshake), a datagram it already took from the queue may be handled after RTCP handled here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pylibsrtp
from aiortc.rtcdtlstransport import State
from aiortc.rtp import is_rtcp

import fleet.webrtc  # noqa: F401 - its import checks the private API used here

from fleet.sockstamp import arrival_clock

__all__ = ["is_srtcp", "lean_rtcp", "rtcp_now", "run_now", "skip_stun"]

log = logging.getLogger(__name__)
_GOING_ON: set[asyncio.Future[Any]] = set()  # handlers that waited, until they end


def is_srtcp(data: bytes) -> bool:
    """What aiortc's DTLS transport reads as SRTCP: a first byte of 128-191 (RFC 7983) and aiortc's own
    ``is_rtcp`` (packet types 192-208)."""
    return 127 < data[0] < 192 and is_rtcp(data) if data else False


def skip_stun(connection: Any, component: int, data_received: Callable[[bytes, int, float | None], None],
              stamp: bool = True) -> bool:
    """Hand the nominated pair's datagrams whose first byte says RTP or RTCP (128-191, RFC 7983 section 7)
    straight to ``data_received``, without aioice's attempt to parse each as STUN first (a STUN message's first
    byte is 0-3: the attempt fails for every one); False while no pair is nominated. A datagram whose second
    byte has its top bit set (an RTP packet with the marker bit, a frame's last, which times the frame; not RTCP,
    which ``rtcp_now`` handles as it comes) comes with when it reached the socket (``fleet.sockstamp``, whose
    stamping starts here; None where the kernel cannot tell, or without ``stamp``); the others with None (asking
    costs a system call, 1 µs, per packet)."""
    pair = connection._nominated.get(component)
    if pair is None:
        return False
    parse_first = pair.protocol.datagram_received
    arrival = arrival_clock(pair.protocol.transport) if stamp else None

    def datagram_received(data: bytes, addr: Any) -> None:
        if data and 127 < data[0] < 192:
            marker = len(data) > 1 and data[1] & 0x80 and not 191 < data[1] < 209  # not RTCP: handled as it comes
            data_received(data, component, arrival() if arrival is not None and marker else None)
        else:
            parse_first(data, addr)  # STUN (consent checks) and DTLS

    pair.protocol.datagram_received = datagram_received
    return True


def rtcp_now(dtls: Any, data: bytes) -> bool:
    """An SRTCP datagram of ``dtls`` (aiortc's ``RTCDtlsTransport``) handled now, as its loop would: unprotected
    (dropped if that fails, or if it is longer than SRTP's 1500-byte buffer, where aiortc would end its DTLS
    transport: as the lean path's media), parsed and routed to its senders' and receivers' handlers. False,
    untouched, while the transport is not connected and keyed: then it takes aiortc's path."""
    srtp = dtls._rx_srtp
    if srtp is None or dtls._state is not State.CONNECTED:
        return False
    try:
        plain = srtp.unprotect_rtcp(data)
    except (pylibsrtp.Error, ValueError):  # ValueError: too long for pylibsrtp's buffer
        return True
    run_now(dtls._handle_rtcp_data(plain))
    return True


def run_now(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` now, to its end if it never waits (aiortc's RTCP handlers do not, but for a retransmission
    whose send waits); if it waits, a task takes it on from there. An exception from it is logged. Its first
    step runs outside any task (``asyncio.current_task()`` is None there, and ``asyncio.timeout`` fails)."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception:  # noqa: BLE001 - a handler's failure is not the caller's (a datagram callback)
        log.warning("an RTCP handler failed", exc_info=True)
        return
    task = asyncio.ensure_future(_go_on(coro, waiting))
    _GOING_ON.add(task)
    task.add_done_callback(_GOING_ON.discard)


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, None]:
    """``coro``, which yielded ``waiting`` (a future it awaits, or None for a bare yield), stepped on by the task
    running this as that task would step it: resumed when ``waiting`` is done, or thrown what the task throws
    (a cancellation, or the exception of the future it waited on). A task cancelled before its first step
    leaves ``coro`` unstarted here: it is closed when collected (its ``finally`` runs then)."""
    try:
        while True:
            try:
                yield waiting
            except BaseException as thrown:  # noqa: BLE001 - a cancellation or a future's exception, passed on
                waiting = coro.throw(thrown)
            else:
                waiting = coro.send(None)
    except StopIteration:
        pass
    except Exception:  # noqa: BLE001
        log.warning("an RTCP handler failed", exc_info=True)


def lean_rtcp(dtls: Any) -> None:
    """Give the connection under ``dtls`` (a sending peer's: its datagrams are RTCP, STUN and DTLS) the lean
    path for RTCP: from the nominated pair straight to ``rtcp_now``, unless older data waits in aioice's queue;
    everything else as before. Nothing where aioice's own ``data_received`` was replaced already (by this, or
    by a lean receiver, ``fleet.leanrtp``, which takes RTCP as it arrives itself)."""
    connection: Any = dtls.transport._connection
    original, queue = connection.data_received, connection._queue
    aioices_own = inspect.ismethod(original) and original.__self__ is connection
    if not aioices_own:
        return
    direct = False

    def data_received(data: bytes, component: int, arrival: float | None = None) -> None:
        nonlocal direct
        if not direct:
            direct = skip_stun(connection, component, data_received, stamp=False)
        if not (is_srtcp(data) and queue.empty() and rtcp_now(dtls, data)):
            original(data, component)

    connection.data_received = data_received
