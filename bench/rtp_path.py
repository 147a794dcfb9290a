"""CPU per packet of the probe's lean RTP path (``fleet.leanrtp``), each side alone, without sockets or timers.

The probe's session cost moves by up to 20 % from run to run (``probe_profile.py``), too much to tell a change
of a few per cent in the per-packet path. Here one loopback pair (a lean sender, a frame tap on a lean
receiver) connects and carries media; then its sender is paused, F frames of the clip are sent through the
lean sender's ``frame`` with the socket's ``sendto`` replaced by a list (the send side: header, extensions,
SRTP, history, counters), and those datagrams are handed to the receiving ICE pair's ``datagram_received``
(the receive side: SRTP, parsing, the receiver's report and NACK duties, the frame tap's reassembly), the
CPU of each read with ``time.process_time``. Neither figure holds the system calls or the event loop's
callback per datagram (``probe_profile.py --floor`` measures those with the rest).

As a yardstick from the same run, the same RTP packets (kept from one more round, built as aiortc's
``RtpPacket``s before the timing) go through aiortc's own per-packet steps: serialize with its header
extensions and protect; unprotect and parse; pylibsrtp ``Session``s of the SRTP profile the pair negotiated,
best of the same number of rounds. The lean sides are reported in µs per packet
and as multiples of that yardstick.

    python bench/rtp_path.py [--codec h264|vp8] [--frames 3000] [--repeat 5]

Prints one line per side and, last, one JSON object; each figure is the best of ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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


async def measure(codec: str, frames: int, repeat: int) -> dict:
    from fleet.leanrtp import lean_sender
    from fleet.media import H264_PROFILE_LEVEL_ID, PacketTrack, clip_payloads, synthetic_clip
    from fleet.rtp import FrameTap
    from fleet.webrtc import codecs_named, loopback_pair, use_host_addresses

    use_host_addresses(["127.0.0.1"])
    clip = synthetic_clip(SIZE, SIZE, FPS, codec=codec)
    named = codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID) if codec == "h264" else codecs_named("video", "VP8")
    got: list = []  # the frames the receiving tap hands over (the tap is kept by the receiver it hooks)
    a, b, sender, receiver = await loopback_pair(
        PacketTrack(clip), named, on_sender=lean_sender,
        on_receiver=lambda r: FrameTap(r, got.append, decode=False, bandwidth_feedback=False))
    try:
        deadline = time.monotonic() + FLOWING_S
        while len(got) < FLOWING_FRAMES:
            if time.monotonic() > deadline:
                raise SystemExit(f"the loopback pair delivered {len(got)} frames in {FLOWING_S:.0f} s")
            await asyncio.sleep(0.05)
        sender._enabled = False  # the live send loop skips its frames from here on
        await asyncio.sleep(DRAIN_S)  # datagrams already sent are read now; the measured rounds below hold the loop
        lean = sender._run_rtp.__self__
        real_route = lean.route
        captured: list[bytes] = []
        plain: list[bytes] = []

        def route():
            """The sender's own route per frame (its checks, SRTP, address), the socket's sendto a list."""
            protect, _, address = real_route()
            if not keep:
                return protect, lambda data, _addr: captured.append(data), address

            def protect_kept(data: bytes) -> bytes:  # the RTP packets kept for the yardstick (not measured)
                plain.append(data)
                return protect(data)
            return protect_kept, lambda data, _addr: captured.append(data), address
        lean.route = route
        codecs = receiver._RTCRtpReceiver__codecs
        pt = next(p for p, c in codecs.items() if c.name.lower() == codec)
        payloads = clip_payloads(clip)
        pair = b.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
        step = 90_000 // FPS
        best_send = best_recv = float("inf")
        keep = False  # the round that keeps the RTP packets for the yardstick
        n = 0
        received0 = len(got)
        for r in range(repeat + 1):  # the last round keeps the RTP packets for the yardstick
            keep = r == repeat
            captured.clear()
            t0 = time.process_time()
            for i in range(frames):
                lean.frame(payloads.frame(i % clip.frames, lean._picture_id(None)), (r * frames + i) * step, pt)
            if not keep:
                best_send = min(best_send, time.process_time() - t0)
            n = len(captured)
            deliver = pair.protocol.datagram_received
            t0 = time.process_time()
            for data in captured:
                deliver(data, pair.remote_addr)
            if not keep:
                best_recv = min(best_recv, time.process_time() - t0)
        delivered = len(got) - received0
        if delivered < (repeat + 1) * frames * TAKEN_MIN:
            raise SystemExit(f"the frame tap took {delivered} of {(repeat + 1) * frames} frames: the receive side was not measured")

        yard_send, yard_recv = yardstick(sender, plain, repeat)
    finally:
        await asyncio.gather(a.close(), b.close(), return_exceptions=True)
    us = 1e6 / n
    return {"codec": codec, "frames": frames, "packets": n, "repeat": repeat,
            "send_us_per_packet": round(best_send * us, 2), "receive_us_per_packet": round(best_recv * us, 2),
            "yardstick_send_us": round(yard_send * us, 2), "yardstick_receive_us": round(yard_recv * us, 2),
            "send_in_yardsticks": round(best_send / yard_send, 3), "receive_in_yardsticks": round(best_recv / yard_recv, 3),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, CPython {platform.python_version()}"}


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
    for side, steps in (("send", "serialize + protect"), ("receive", "unprotect + parse")):
        print(f"  {side:8} {r[side + '_us_per_packet']:6.2f} µs per packet ({r[side + '_in_yardsticks']:.2f} of aiortc's {steps}, "
              f"{r['yardstick_' + side + '_us']} µs)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
