"""CPU per packet of the probe's lean RTP path (``fleet.leanrtp``), each side alone, on its Python and its
native per-packet path (``fleet._rtpnative``) in the same run.

The probe's session cost moves by up to 20 % from run to run (``probe_profile.py``), too much to tell a change
of a few per cent in the per-packet path. Here one loopback pair (a lean sender, a frame tap on a lean receiver)
connects and carries media; then its sender is paused and F frames of the clip are sent through the lean
sender's ``frame`` onto a socket of the bench's own (the send side: header, extensions, SRTP, history, counters,
and the system calls: a ``sendto`` per packet on the Python path, one ``sendmmsg`` per frame (per 32 packets) on
the native one; over loopback the kernel also delivers each datagram to the receiving socket within the send, a
cost both paths carry alike, which draws their ratio towards 1), read back off the clock, and handed to the
receiving ICE pair's ``datagram_received`` (the receive side: SRTP, parsing, the receiver's report and NACK
duties, the frame tap's reassembly), the CPU of each read with ``time.process_time``. The receive figure holds
no system call or event-loop callback per datagram (``probe_profile.py --floor`` measures those with the rest).
Each path has ``--repeat`` rounds of its own, the two taking turns (drift is shared); the native one is left out
where the extension cannot be used (or ``FLEET_RTP_NATIVE=0``).

As a yardstick from the same run, the same RTP packets (kept from one more round, built as aiortc's
``RtpPacket``s before the timing) go through aiortc's own per-packet steps: serialize with its header
extensions and protect; unprotect and parse; pylibsrtp ``Session``s of the SRTP profile the pair negotiated,
best of the same number of rounds (no system calls). Each path's sides are reported in µs per packet and as
multiples of that yardstick, and the native path's as a share of the Python path's.

    python bench/rtp_path.py [--codec h264|vp8] [--frames 3000] [--repeat 5]

Prints one line per path and side and, last, one JSON object; each figure is the best of ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE, FPS = 512, 30
FLOWING_S = 20.0    # the pair delivers its first frames within this
FLOWING_FRAMES = 10  # frames the live pair delivers before the measured rounds
DRAIN_S = 0.2       # after the live sender pauses, for the datagrams already sent to be read
TAKEN_MIN = 0.99    # the frame tap must take this share of the frames sent, or the receive side was not measured
CHUNK_FRAMES = 20   # frames sent between reads of the bench's socket (about 50 datagrams: no buffer overflows)
PATHS = ("python", "native")


async def measure(codec: str, frames: int, repeat: int) -> dict:
    from fleet.leanrtp import lean_sender
    from fleet.media import H264_PROFILE_LEVEL_ID, PacketTrack, clip_payloads, synthetic_clip
    from fleet.rtp import FrameTap
    from fleet.srtpcalls import native_enabled
    from fleet.webrtc import codecs_named, loopback_pair, use_host_addresses

    use_host_addresses(["127.0.0.1"])
    clip = synthetic_clip(SIZE, SIZE, FPS, codec=codec)
    named = codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID) if codec == "h264" else codecs_named("video", "VP8")
    got: list = []  # the frames the receiving tap hands over
    taps: list = []
    a, b, sender, receiver = await loopback_pair(
        PacketTrack(clip), named, on_sender=lean_sender,
        on_receiver=lambda r: taps.append(FrameTap(r, got.append, decode=False, bandwidth_feedback=False)))
    try:
        deadline = time.monotonic() + FLOWING_S
        while len(got) < FLOWING_FRAMES:
            if time.monotonic() > deadline:
                raise SystemExit(f"the loopback pair delivered {len(got)} frames in {FLOWING_S:.0f} s")
            await asyncio.sleep(0.05)
        sender._enabled = False  # the live send loop skips its frames from here on
        await asyncio.sleep(DRAIN_S)  # datagrams already sent are read now; the measured rounds below hold the loop
        lean = sender._run_rtp.__self__
        lean_rx = taps[0]._lean
        codecs = receiver._RTCRtpReceiver__codecs
        pt = next(p for p, c in codecs.items() if c.name.lower() == codec)
        payloads = clip_payloads(clip)
        pair = b.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
        wire = Wire()
        real_route = lean.route
        state = {"native": False, "keep": None}

        def route():
            """The sender's own route per frame (its checks, SRTP), its datagrams to the bench's own socket."""
            srtp, _, _, _ = real_route()
            srtp.native = state["native"]
            calls = srtp if state["keep"] is None else Kept(srtp, state["keep"])
            return calls, wire, wire.address, wire.out.fileno() if state["native"] else None
        lean.route = route
        step = 90_000 // FPS

        def frames_from(base: int):
            return lambda i: lean.frame(payloads.frame(i % clip.frames, lean._picture_id(None)), (base + i) * step, pt)

        def deliver(data: bytes) -> None:
            pair.protocol.datagram_received(data, pair.remote_addr)
        paths = [p for p in PATHS if p == "python" or native_enabled()]
        best = {p: [float("inf"), float("inf"), 0] for p in paths}  # send, receive, datagrams
        taken = dict.fromkeys(paths, 0)
        r = 0
        for k in range(repeat):  # the paths take turns, each round's order the other way round (drift shared)
            for path in paths if k % 2 == 0 else paths[::-1]:
                state["native"] = lean_rx.srtp.native = path == "native"
                received0 = len(got)
                send, recv, n = wire.round(frames_from(r * frames), frames, deliver)
                r += 1
                taken[path] += len(got) - received0
                best[path] = [min(best[path][0], send), min(best[path][1], recv), n]
        for path, delivered in taken.items():
            if delivered < repeat * frames * TAKEN_MIN:
                raise SystemExit(f"{path}: the frame tap took {delivered} of {repeat * frames} frames: the receive side was not measured")
        result = {p: tuple(v) for p, v in best.items()}
        plain: list[bytes] = []  # one more round on the Python path keeps the RTP packets for the yardstick
        state["native"], state["keep"] = False, plain
        wire.round(frames_from(r * frames), frames, deliver)
        yard_send, yard_recv = yardstick(sender, plain, repeat)
        wire.close()
    finally:
        await asyncio.gather(a.close(), b.close(), return_exceptions=True)
    out = {"codec": codec, "frames": frames, "packets": result["python"][2], "repeat": repeat,
           "yardstick_send_us": round(yard_send * 1e6 / len(plain), 2), "yardstick_receive_us": round(yard_recv * 1e6 / len(plain), 2)}
    for path, (send, recv, n) in result.items():
        out[path] = {"send_us_per_packet": round(send * 1e6 / n, 2), "receive_us_per_packet": round(recv * 1e6 / n, 2),
                     "send_in_yardsticks": round(send / yard_send * len(plain) / n, 3),
                     "receive_in_yardsticks": round(recv / yard_recv * len(plain) / n, 3)}
    if "native" in result:
        out["native_over_python"] = {side: round(result["native"][k] / result["python"][k], 3) for k, side in ((0, "send"), (1, "receive"))}
    out["machine"] = f"{platform.machine()} {os.cpu_count()} cpu, CPython {platform.python_version()}"
    return out


class Kept:
    """SrtpCalls whose protect also keeps each RTP packet (the yardstick's, in a round not measured)."""

    def __init__(self, srtp, plain: list[bytes]) -> None:
        self.srtp, self.plain = srtp, plain

    def protect(self, data: bytes) -> bytes:
        self.plain.append(data)
        return self.srtp.protect(data)


class Wire:
    """The sender's transport in the bench: its datagrams sent on a socket of the bench's own over loopback
    (``sendto`` per packet on the Python path; the native path's one ``sendmmsg`` per frame on the same socket)
    and read back, off the clock, for the receive side."""

    def __init__(self) -> None:
        self.out, self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.setblocking(False)
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sink.bind(("127.0.0.1", 0))
        self.sink.setblocking(False)
        self.address = self.sink.getsockname()

    def sendto(self, data: bytes, address) -> None:
        self.out.sendto(data, address)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str):
        return self.out if name == "socket" else None

    def round(self, send_frame, frames: int, deliver) -> tuple[float, float, int]:
        """``frames`` frames through ``send_frame(i)`` in chunks (read back between them, off the clock, so no
        socket buffer overflows), then each datagram through ``deliver``: the CPU seconds of each side and
        the datagrams."""
        send = 0.0
        captured: list[bytes] = []
        for start in range(0, frames, CHUNK_FRAMES):
            t0 = time.process_time()
            for i in range(start, min(frames, start + CHUNK_FRAMES)):
                send_frame(i)
            send += time.process_time() - t0
            self.drain(captured)
        t0 = time.process_time()
        for data in captured:
            deliver(data)
        return send, time.process_time() - t0, len(captured)

    def drain(self, into: list[bytes]) -> None:
        """The datagrams sent so far: over loopback a datagram is queued at the sink before its send returns."""
        try:
            while True:
                into.append(self.sink.recv(2048))
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.out.close()
        self.sink.close()


def yardstick(sender, plain: list[bytes], repeat: int) -> tuple[float, float]:
    """CPU seconds of aiortc's own per-packet steps on these RTP packets, best of ``repeat`` rounds: serialize
    (with the sender's header extensions), then protect; unprotect, then parse. The packets are built before
    the timing, and each round has fresh SRTP sessions of the profile the sender's DTLS transport negotiated."""
    import pylibsrtp
    from aiortc.rtcdtlstransport import SRTP_PROFILES
    from aiortc.rtp import HeaderExtensions, RtpPacket

    selected = sender.transport._ssl.get_selected_srtp_profile()
    profile = next(p for p in SRTP_PROFILES if p.openssl_profile == selected)
    extensions = sender._RTCRtpSender__rtp_header_extensions_map
    packets = []
    for d in plain:
        p = RtpPacket.parse(d, extensions)
        p.extensions = HeaderExtensions(mid=p.extensions.mid, abs_send_time=p.extensions.abs_send_time)
        packets.append(p)
    best_send = best_recv = float("inf")
    for _ in range(repeat):
        key = os.urandom(profile.key_length + profile.salt_length)
        tx, rx = (pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind, srtp_profile=profile.libsrtp_profile))
                  for kind in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND))
        t0 = time.process_time()
        protected = [tx.protect(p.serialize(extensions)) for p in packets]
        best_send = min(best_send, time.process_time() - t0)
        t0 = time.process_time()
        for d in protected:
            RtpPacket.parse(rx.unprotect(d), extensions)
        best_recv = min(best_recv, time.process_time() - t0)
    return best_send, best_recv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", choices=("h264", "vp8"), default="h264")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=0, help="the core this process is pinned to")
    args = ap.parse_args()
    if args.repeat < 1 or args.frames < 1:
        ap.error("--frames and --repeat must be at least 1")
    os.sched_setaffinity(0, {args.cpu})
    import uvloop

    uvloop.install()
    r = asyncio.run(measure(args.codec, args.frames, args.repeat))
    print(f"{r['codec']}: {r['packets']} packets of {r['frames']} frames, best of {r['repeat']}")
    for path in PATHS:
        for side, steps in (("send", "serialize + protect"), ("receive", "unprotect + parse")):
            if path in r:
                f = r[path]
                print(f"  {path:6} {side:8} {f[side + '_us_per_packet']:6.2f} µs per packet ({f[side + '_in_yardsticks']:.2f} of aiortc's "
                      f"{steps}, {r['yardstick_' + side + '_us']} µs)")
    if "native_over_python" in r:
        print("  the native path over the Python path: " + ", ".join(f"{k} {v}" for k, v in r["native_over_python"].items()))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
