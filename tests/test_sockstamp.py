"""A datagram's arrival is when it reached the socket, on real UDP sockets over loopback, read by a real event
loop (asyncio's and uvloop's) that the test stalls on purpose: the probe's (fleet.sockstamp) and the reference
gateway's own (fleet.gateway.arrivals, the truth's input times)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aioice.turn
import pytest
import uvloop

from fleet.gateway.arrivals import SocketArrivals
from fleet.sockstamp import arrival_clock
from services import free_port, unavailable, wait_for

TURNSERVER = os.environ.get("FLEET_TURNSERVER", "/usr/bin/turnserver")

STALL_S = 0.08       # the loop is kept busy this long after each datagram is sent
TOLERANCE_S = 0.003  # a stamp's distance from its send on loopback (measured: under 0.1 ms)
RELAY_TOLERANCE_S = 0.03  # through coturn, a process of its own: its relay waits for a core (measured: 0.1 to
                          # 4.5 ms on two cores under the full suite); a stamp at handling is STALL_S late or more
DEADLINE_S = 10.0
WARM_UP_STALL_S = 0.005
WARM_UP_TRIES = 100


TURN_IP = "127.0.0.2"  # coturn listens and relays here; the sender is here too (coturn lets loopback peers in
                       # only when told: allow-loopback-peers)


@dataclass(frozen=True)
class Turn:
    address: tuple[str, int]
    user: str
    credential: str


@pytest.fixture(scope="module")
def turn(tmp_path_factory) -> Iterator[Turn]:
    """Debian's coturn on loopback, long-term credentials made up here."""
    if not os.path.exists(TURNSERVER):
        unavailable(f"coturn ({TURNSERVER}) is not installed")
    tmp = tmp_path_factory.mktemp("turn")
    server = Turn((TURN_IP, free_port(TURN_IP)), "fleet", secrets.token_hex(16))
    conf = tmp / "turnserver.conf"
    conf.write_text("\n".join([
        f"listening-ip={TURN_IP}", f"listening-port={server.address[1]}", f"relay-ip={TURN_IP}", "min-port=49300",
        "max-port=49400", "lt-cred-mech", f"user={server.user}:{server.credential}", "realm=fleet.test", "no-tls",
        "no-dtls", "no-tcp-relay", "no-cli", "allow-loopback-peers", f"log-file={tmp / 'turnserver.log'}",
        "simple-log", f"pidfile={tmp / 'turnserver.pid'}", ""]))
    proc = subprocess.Popen([TURNSERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("coturn to listen", lambda: proc.poll() is not None or f"{TURN_IP}:{server.address[1]} " in
                 subprocess.run(["ss", "-Hlun"], capture_output=True, text=True).stdout, DEADLINE_S)
        assert proc.poll() is None, (tmp / "turnserver.log").read_text(errors="replace")[-2000:]
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(DEADLINE_S)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrival: Callable[[], float] | None = None
        self.seen: list[tuple[bytes, float | None, float]] = []  # (data, stamp, when the loop handed it over)
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


async def open_receiver(out: socket.socket, turn: Turn | None) -> tuple[asyncio.BaseTransport, Receiver, Any]:
    """A Receiver on its own socket, or on a TURN relay (aioice's client; the sender ``out`` let in by a first
    datagram the other way, which binds a channel): its transport, itself, and the address to send to."""
    loop = asyncio.get_running_loop()
    if turn is None:
        transport, receiver = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
        return transport, receiver, transport.get_extra_info("sockname")
    turned, relayed = await aioice.turn.create_turn_endpoint(Receiver, turn.address, turn.user, turn.credential)
    out.bind((TURN_IP, 0))
    out.settimeout(DEADLINE_S)
    turned.sendto(b"let me in", out.getsockname())
    _, to = await loop.run_in_executor(None, out.recvfrom, 64)  # from the relayed address, once the channel is bound
    return turned, relayed, to


async def stamped_through_a_stall(turn: Turn | None = None) -> tuple[list[float], list[tuple[bytes, float | None, float]]]:
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        transport, receiver, to = await open_receiver(out, turn)

        def stall(names: tuple[bytes, ...], seconds: float) -> None:
            for name in names:
                sent.append(time.monotonic())
                out.sendto(name, to)
                busy(seconds)

        try:
            # the kernel turns stamping on a moment after the first socket asks (a deferred work item): until a
            # datagram read after a short stall carries a stamp from before it
            for _ in range(WARM_UP_TRIES):
                loop.call_soon(stall, (b"w",), WARM_UP_STALL_S)
                await receiver.until(len(receiver.seen) + 1)
                _, stamp, handled = receiver.seen[-1]
                if stamp is not None and handled - stamp >= WARM_UP_STALL_S / 2:
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


def check_stamps(sent: list[float], seen: list[tuple[bytes, float | None, float]], tolerance_s: float = TOLERANCE_S
                 ) -> None:
    assert [data for data, _, _ in seen] == [b"a", b"b"]
    for at, (data, stamp, handled) in zip(sent, seen):
        # the loop handed both over after the whole stall: stamped then, each would be late by it
        assert handled - at >= STALL_S * (2 if data == b"a" else 1) - TOLERANCE_S, (data, handled - at)
        assert stamp is not None and at - TOLERANCE_S <= stamp <= at + tolerance_s, (data, stamp, at)
    # each datagram its own stamp, not the stamp of the last one read
    first, second = seen[0][1], seen[1][1]
    assert first is not None and second is not None
    assert abs((second - first) - (sent[1] - sent[0])) <= tolerance_s


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_datagram_read_after_a_stall_of_the_loop_carries_when_it_arrived(new_loop) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        check_stamps(*runner.run(stamped_through_a_stall()))


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_datagram_relayed_by_turn_carries_when_it_reached_the_turn_clients_socket(turn, new_loop) -> None:
    """Media relayed through TURN (over UDP) reaches aioice's TURN client socket, which hands each payload on
    in the same call: its stamp is the payload's (coturn in between, on loopback)."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        check_stamps(*runner.run(stamped_through_a_stall(turn)), tolerance_s=RELAY_TOLERANCE_S)


def test_there_is_no_clock_for_a_transport_without_a_socket() -> None:
    class NoSocket:
        def get_extra_info(self, name: str) -> None:
            return None

    assert arrival_clock(NoSocket()) is None and arrival_clock(None) is None


class OwnSocket:
    """A fake of an asyncio transport: only its ``socket``, a real one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> socket.socket | None:
        return self.sock if name == "socket" else None


def test_a_socket_that_refuses_the_first_ask_has_no_clock() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # no receive stamps on a Unix socket (ENOTTY)
    with a, b:
        assert arrival_clock(OwnSocket(a)) is None


def test_a_stamp_the_kernel_does_not_give_is_none_not_the_time_of_the_call() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        arrival = arrival_clock(OwnSocket(receiver))
        assert arrival is not None
        assert arrival() is None  # nothing read from the socket yet (ENOENT)
    assert arrival() is None  # the socket closed under the call (EBADF)


# --- the reference gateway's own stamps ---------------------------------------------------------------------

SSRC = 0x1234ABCD


def rtp(seq: int, payload_type: int = 96, ssrc: int = SSRC) -> bytes:
    return bytes([0x80, payload_type]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + b"media"


class Handled(asyncio.DatagramProtocol):
    """The ICE pair's protocol as aiortc's path has it: it only hands datagrams on (here: when each was handled)."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.handled: list[tuple[bytes, float]] = []
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.handled.append((data, time.monotonic()))
        self.changed.set()

    async def until(self, count: int) -> None:
        while len(self.handled) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), DEADLINE_S)


class FakePair:
    """A fake of aioice's candidate pair: only its ``protocol``, a real datagram endpoint's."""

    def __init__(self, protocol: Handled) -> None:
        self.protocol = protocol


class FakeConnection:
    """A fake of aioice's Connection: only its nominated pairs by component."""

    def __init__(self, pair: FakePair | None) -> None:
        self._nominated = {1: pair} if pair is not None else {}


async def gateway_stamps_through_a_stall() -> tuple[SocketArrivals, list[float], Handled]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Handled, local_addr=("127.0.0.1", 0))
    arrivals = SocketArrivals()
    assert not SocketArrivals().watch(FakeConnection(None))  # no pair nominated yet
    assert arrivals.watch(FakeConnection(FakePair(protocol)))
    sent: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        def stall(datagrams: list[bytes], seconds: float) -> None:
            for data in datagrams:
                sent.append(time.monotonic())
                out.sendto(data, transport.get_extra_info("sockname"))
                busy(seconds)

        try:
            for seq in range(WARM_UP_TRIES):  # until the kernel's stamps are on (see above)
                loop.call_soon(stall, [rtp(seq)], WARM_UP_STALL_S)
                await protocol.until(seq + 1)
                stamp = arrivals.arrival(SSRC, seq)
                if stamp is not None and protocol.handled[-1][1] - stamp >= WARM_UP_STALL_S / 2:
                    break
            else:
                raise AssertionError("no datagram was stamped on arrival")
            warm = len(protocol.handled)
            sent.clear()
            loop.call_soon(stall, [rtp(1000), rtp(1001, payload_type=200), rtp(1002)], STALL_S)
            await protocol.until(warm + 3)
        finally:
            transport.close()
    return arrivals, sent, protocol


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_the_gateway_keeps_when_each_rtp_packet_reached_its_socket(new_loop) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        arrivals, sent, protocol = runner.run(gateway_stamps_through_a_stall())
    assert [d for d, _ in protocol.handled[-3:]] == [rtp(1000), rtp(1001, payload_type=200), rtp(1002)]
    for seq, at in ((1000, sent[0]), (1002, sent[2])):
        stamp = arrivals.arrival(SSRC, seq)
        assert stamp is not None and at - TOLERANCE_S <= stamp <= at + TOLERANCE_S, (seq, stamp, at)
    assert protocol.handled[-3][1] - sent[0] >= 3 * STALL_S - TOLERANCE_S  # handled after the whole stall
    # RTCP (payload type 200 here) is not stamped; neither is another stream's packet nor one not seen
    assert arrivals.arrival(SSRC, 1001) is None and arrivals.arrival(SSRC + 1, 1000) is None
    assert arrivals.arrival(SSRC, 1003) is None
