"""fleet.sockstamp: a datagram's arrival is when it reached the socket, on real UDP sockets over loopback, read by
a real event loop (asyncio's and uvloop's) that the test stalls on purpose."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest
import uvloop

from fleet.sockstamp import arrival_clock

STALL_S = 0.08       # the loop is kept busy this long after each datagram is sent
TOLERANCE_S = 0.003  # a stamp's distance from its send on loopback (measured: under 0.1 ms)
DEADLINE_S = 10.0
WARM_UP_STALL_S = 0.005
WARM_UP_TRIES = 100


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrival: Callable[[], float] | None = None
        self.seen: list[tuple[bytes, float, float]] = []  # (data, stamp, when the loop handed it over)
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.arrival = arrival_clock(transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        assert self.arrival is not None
        self.seen.append((data, self.arrival(), time.monotonic()))
        self.changed.set()

    async def until(self, count: int) -> None:
        while len(self.seen) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), DEADLINE_S)


def busy(seconds: float) -> None:
    """Keep the loop's thread on the CPU (the stall under test, not a wait for anything)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def stamped_through_a_stall() -> tuple[list[float], list[tuple[bytes, float, float]]]:
    loop = asyncio.get_running_loop()
    transport, receiver = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    sent: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        def stall(names: tuple[bytes, ...], seconds: float) -> None:
            for name in names:
                sent.append(time.monotonic())
                out.sendto(name, transport.get_extra_info("sockname"))
                busy(seconds)

        try:
            # the kernel turns stamping on a moment after the first socket asks (a deferred work item): until a
            # datagram read after a short stall carries a stamp from before it
            for _ in range(WARM_UP_TRIES):
                loop.call_soon(stall, (b"w",), WARM_UP_STALL_S)
                await receiver.until(len(receiver.seen) + 1)
                _, stamp, handled = receiver.seen[-1]
                if handled - stamp >= WARM_UP_STALL_S / 2:
                    break
            else:
                raise AssertionError("no datagram was stamped on arrival")
            warm = len(receiver.seen)
            sent.clear()
            loop.call_soon(stall, (b"a", b"b"), STALL_S)
            await receiver.until(warm + 2)
        finally:
            transport.close()
    return sent, receiver.seen[warm:]


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_datagram_read_after_a_stall_of_the_loop_carries_when_it_arrived(new_loop) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        sent, seen = runner.run(stamped_through_a_stall())
    assert [data for data, _, _ in seen] == [b"a", b"b"]
    for at, (data, stamp, handled) in zip(sent, seen):
        # the loop handed both over after the whole stall: stamped then, each would be late by it
        assert handled - at >= STALL_S * (2 if data == b"a" else 1) - TOLERANCE_S, (data, handled - at)
        assert at - TOLERANCE_S <= stamp <= at + TOLERANCE_S, (data, stamp - at)
    # each datagram its own stamp, not the stamp of the last one read
    assert abs((seen[1][1] - seen[0][1]) - (sent[1] - sent[0])) <= TOLERANCE_S


def test_there_is_no_clock_for_a_transport_without_a_socket() -> None:
    class NoSocket:
        def get_extra_info(self, name: str) -> None:
            return None

    assert arrival_clock(NoSocket()) is None and arrival_clock(None) is None
