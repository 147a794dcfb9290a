"""SRTCP handled as it arrives (fleet.leanice): ``run_now`` runs aiortc's handlers to their end, or hands one
that waits to a task; over real peer connections, the RTCP each side gets (receiver reports, sender reports,
a keyframe request, a NACK) reaches aiortc's own handlers without aioice's queue once the lean paths are in
place, and does what it does on aiortc's path.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import aioice.ice
import pylibsrtp
import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtcpRrPacket

import fleet.leanice
import fleet.leanrtp
from fleet.leanice import is_srtcp, lean_rtcp, rtcp_now, run_now
from fleet.leanrtp import lean_sender
from fleet.media import H264_PROFILE_LEVEL_ID, PacketTrack, synthetic_clip
from fleet.rtp import FrameTap, TapFrame
from fleet.webrtc import codecs_named, loopback_pair, on_keyframe_request, request_keyframe
from test_lean_rtp import DEADLINE_S, until

FPS = 30.0


# --- run_now --------------------------------------------------------------------------------------------------

def test_a_coroutine_that_never_waits_runs_to_its_end_in_the_call() -> None:
    done: list[str] = []

    async def handler() -> None:
        done.append("ran")

    run_now(handler())   # no event loop at all: nothing is scheduled
    assert done == ["ran"]


def test_a_coroutine_that_waits_goes_on_in_a_task_with_what_it_waited_for() -> None:
    steps: list[Any] = []

    async def main() -> None:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handler() -> None:
            steps.append("before")
            steps.append(await future)
            await asyncio.sleep(0)   # a bare yield, too
            steps.append("after")

        run_now(handler())
        assert steps == ["before"] and len(fleet.leanice._GOING_ON) == 1
        future.set_result(7)
        (task,) = fleet.leanice._GOING_ON
        await asyncio.wait_for(task, DEADLINE_S)
        assert steps == ["before", 7, "after"] and not fleet.leanice._GOING_ON

    asyncio.run(main())


@pytest.mark.parametrize("waits", [False, True], ids=["at once", "after a wait"])
def test_a_handler_that_raises_is_logged_not_raised(waits: bool, caplog: pytest.LogCaptureFixture) -> None:
    async def handler() -> None:
        if waits:
            await asyncio.sleep(0)
        raise ValueError("bad packet")

    async def main() -> None:
        run_now(handler())
        for task in list(fleet.leanice._GOING_ON):
            await asyncio.wait_for(task, DEADLINE_S)

    with caplog.at_level(logging.WARNING, logger="fleet.leanice"):
        asyncio.run(main())
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [("bad packet",)]


@pytest.mark.parametrize("data, rtcp", [
    (bytes([0x80, 200]) + bytes(26), True), (bytes([0x81, 208]) + bytes(26), True),     # SR; aiortc's last type
    (bytes([0x80, 209]) + bytes(26), False), (bytes([0x81, 223]) + bytes(26), False),   # RTP, PT 81 and 95 + marker
    (bytes([0x80, 96]) + bytes(26), False), (bytes([0x80, 0xE0]) + bytes(26), False),   # RTP (PT 96, 96+marker)
    (bytes([0x80, 191]) + bytes(26), False), (bytes([23, 200]) + bytes(26), False),      # PT 63+marker; DTLS
    (bytes([0xC0, 200]) + bytes(26), False),                                            # not version 2
    (bytes([0x80]), False), (b"", False)])
def test_srtcp_is_what_aiortcs_transport_reads_as_such(data: bytes, rtcp: bool) -> None:
    assert is_srtcp(data) is rtcp


def test_a_handler_that_waits_sees_a_failed_future_and_a_cancellation() -> None:
    """What the task is thrown reaches the handler: a future's exception through its own ``await``, a
    cancellation through its ``finally``."""
    seen: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        failing: asyncio.Future[int] = loop.create_future()
        hanging: asyncio.Future[int] = loop.create_future()

        async def catches() -> None:
            try:
                await failing
            except KeyError:
                seen.append("caught")

        async def cleans_up() -> None:
            try:
                await hanging
            finally:
                seen.append("cleaned up")

        run_now(catches())
        (catching,) = fleet.leanice._GOING_ON
        run_now(cleans_up())
        (cleaning,) = fleet.leanice._GOING_ON - {catching}
        await asyncio.sleep(0)  # both tasks take their first step: each waits on its future
        failing.set_exception(KeyError("gone"))
        cleaning.cancel()
        await asyncio.wait([catching, cleaning], timeout=DEADLINE_S)
        assert catching.done() and not catching.cancelled() and cleaning.cancelled()

    asyncio.run(main())
    assert sorted(seen) == ["caught", "cleaned up"]


def test_a_handler_cancelled_at_a_bare_yield_is_thrown_the_cancellation() -> None:
    """A cancellation that comes while the handler gave way (``asyncio.sleep(0)``) is thrown into it, as a task
    of its own would throw it: resumed instead, it would run on to its end."""
    seen: list[str] = []

    async def main() -> None:
        async def gives_way() -> None:
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            seen.append("ran on")

        run_now(gives_way())
        (task,) = fleet.leanice._GOING_ON
        await asyncio.sleep(0)  # the task's first step: it gives way again, its next step scheduled
        task.cancel()
        await asyncio.wait([task], timeout=DEADLINE_S)
        assert task.cancelled()

    asyncio.run(main())
    assert seen == ["cancelled"]


class FakeDtls:
    """A stand-in for aiortc's DTLS transport (a fake: what ``rtcp_now`` reads of it), counting the datagrams
    its RTCP handler got."""

    def __init__(self, srtp: Any, state: State) -> None:
        self._rx_srtp, self._state, self.handled = srtp, state, []

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self.handled.append(data)


def keyed_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key = bytes(range(30))
    policy = lambda kind: pylibsrtp.Policy(key=key, ssrc_type=kind,  # noqa: E731
                                           srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    return pylibsrtp.Session(policy(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)), \
        pylibsrtp.Session(policy(pylibsrtp.Policy.SSRC_ANY_INBOUND))


def test_rtcp_now_leaves_what_is_not_keyed_or_connected_and_drops_what_does_not_unprotect() -> None:
    tx, rx = keyed_pair()
    report = bytes(RtcpRrPacket(ssrc=1))
    assert rtcp_now(FakeDtls(None, State.CONNECTED), tx.protect_rtcp(report)) is False
    assert rtcp_now(FakeDtls(rx, State.CLOSED), tx.protect_rtcp(report)) is False
    dtls = FakeDtls(rx, State.CONNECTED)
    protected = tx.protect_rtcp(report)
    assert rtcp_now(dtls, protected[:-1] + bytes([protected[-1] ^ 1])) is True  # its tag broken: dropped
    assert rtcp_now(dtls, bytes([0x80, 201]) + bytes(2000)) is True              # too long for SRTP's buffer
    assert dtls.handled == []
    assert rtcp_now(dtls, protected) is True and dtls.handled == [report]


def test_lean_rtcp_leaves_rtcp_to_aiortcs_queue_while_older_data_waits_there() -> None:
    tx, rx = keyed_pair()
    connection = aioice.ice.Connection(ice_controlling=True)
    dtls = FakeDtls(rx, State.CONNECTED)
    dtls.transport = SimpleNamespace(_connection=connection)  # type: ignore[attr-defined]
    lean_rtcp(dtls)
    first, second = tx.protect_rtcp(bytes(RtcpRrPacket(ssrc=1))), tx.protect_rtcp(bytes(RtcpRrPacket(ssrc=2)))
    connection._queue.put_nowait((b"\x17older", 1))  # a DTLS record not read yet
    connection.data_received(first, 1)
    assert connection._queue.qsize() == 2 and dtls.handled == []
    while not connection._queue.empty():
        connection._queue.get_nowait()
    connection.data_received(second, 1)
    assert connection._queue.empty() and dtls.handled == [bytes(RtcpRrPacket(ssrc=2))]


def test_lean_rtcp_takes_over_aioices_own_receive_only() -> None:
    """Once per connection, and not where a lean receiver (or anything else) replaced aioice's own already: a
    second wrapper would hand a lean receiver its media without their socket stamps."""
    connection = aioice.ice.Connection(ice_controlling=True)
    dtls = SimpleNamespace(transport=SimpleNamespace(_connection=connection))
    lean_rtcp(dtls)
    installed = connection.data_received
    assert getattr(installed, "__self__", None) is not connection
    lean_rtcp(dtls)
    assert connection.data_received is installed

    other = aioice.ice.Connection(ice_controlling=True)

    def lean_receivers(data: bytes, component: int, arrival: float | None = None) -> None: ...
    other.data_received = lean_receivers  # type: ignore[method-assign]
    lean_rtcp(SimpleNamespace(transport=SimpleNamespace(_connection=other)))
    assert other.data_received is lean_receivers


# --- over real peer connections -------------------------------------------------------------------------------

@pytest.mark.slow
def test_rtcp_reaches_aiortcs_handlers_on_both_sides_without_its_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lean sender and a lean receiver over loopback: every RTCP datagram either side gets once its lean path
    is in place is handled at once (counted per side), none goes into aioice's queue after that, and what
    the handlers do is done: the sender has the receiver's reports, the receiver the sender's, a keyframe
    request reaches the sender's track, a NACK is answered."""
    direct: dict[int, int] = {}      # id(DTLS transport) -> RTCP datagrams handled at once
    queued_after: dict[int, int] = {}  # id(DTLS transport) -> RTCP datagrams queued once one was handled at once
    dtls_of: dict[int, Any] = {}      # id(aioice connection) -> its DTLS transport
    rtcp_now = fleet.leanice.rtcp_now

    def counted_rtcp_now(dtls: Any, data: bytes) -> bool:
        taken = rtcp_now(dtls, data)
        if taken:
            direct[id(dtls)] = direct.get(id(dtls), 0) + 1
            dtls_of[id(dtls.transport._connection)] = dtls
        return taken

    queue_put = aioice.ice.Connection.data_received

    def counted_put(self: Any, data: bytes, component: int) -> None:
        dtls = dtls_of.get(id(self))
        if dtls is not None and len(data) > 1 and 127 < data[0] < 192 and 192 <= data[1] <= 208:  # RTCP, by its types
            queued_after[id(dtls)] = queued_after.get(id(dtls), 0) + 1
        queue_put(self, data, component)

    monkeypatch.setattr(fleet.leanice, "rtcp_now", counted_rtcp_now)
    monkeypatch.setattr(fleet.leanrtp, "rtcp_now", counted_rtcp_now)
    monkeypatch.setattr(aioice.ice.Connection, "data_received", counted_put)
    clip = synthetic_clip(160, 96, FPS, codec="h264", gop=30)
    track = PacketTrack(clip, max_frames=150)
    frames: list[TapFrame] = []
    taps: list[FrameTap] = []
    retransmitted: list[int] = []
    asked: list[bool] = []  # keyframe requests that reached the sender

    def lean(receiver: RTCRtpReceiver) -> None:
        taps.append(FrameTap(receiver, frames.append, decode=False, bandwidth_feedback=False))

    async def stats_of(pc: Any, kind: str) -> list:
        return [s for s in (await pc.getStats()).values() if s.type == kind]

    async def main() -> None:
        codecs = codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID)
        a, b, sender, receiver = await loopback_pair(track, codecs, on_sender=lean_sender, on_receiver=lean)
        on_keyframe_request(sender, lambda: asked.append(True))
        retransmit = sender._retransmit

        async def recording_retransmit(seq: int) -> None:
            retransmitted.append(seq)
            await retransmit(seq)

        sender._retransmit = recording_retransmit  # type: ignore[method-assign]
        try:
            sending, receiving = id(sender.transport), id(receiver.transport)
            reports: dict[str, list] = {}

            async def reported() -> bool:
                reports["sent"] = await stats_of(b, "remote-outbound-rtp")   # the sender's SRs, at the receiver
                reports["received"] = await stats_of(a, "remote-inbound-rtp")  # the receiver's RRs, at the sender
                return bool(reports["sent"] and reports["received"])

            deadline = asyncio.get_running_loop().time() + DEADLINE_S
            while not (direct.get(sending, 0) >= 2 and direct.get(receiving, 0) >= 2 and await reported()):
                assert asyncio.get_running_loop().time() < deadline, ("no reports handled at once", direct, reports)
                await asyncio.sleep(0.05)
            assert reports["received"][0].packetsReceived > 0 and reports["sent"][0].packetsSent > 0
            # a keyframe request from the receiver reaches the sender (the probe's track would jump to a keyframe)
            await request_keyframe(receiver, taps[0].ssrc)
            await until(lambda: bool(asked), "the keyframe request")
            # a NACK: answered with the packet it names
            kept = next(iter(vars(sender)["_RTCRtpSender__rtp_history"].values()))   # a packet the sender sent
            wanted = int.from_bytes(kept[2:4], "big")
            await receiver._send_rtcp_nack(taps[0].ssrc, [wanted])
            await until(lambda: bool(retransmitted), "the NACK's retransmission")
            assert queued_after.get(sending, 0) == 0 and queued_after.get(receiving, 0) == 0, queued_after
        finally:
            for pc in (a, b):
                await asyncio.wait_for(pc.close(), DEADLINE_S)

    asyncio.run(main())
