"""Where a probe session's CPU goes: N probe sessions in one process against the reference gateway.

The reference gateway runs in relay mode in its own process, pinned to one core; N probe sessions (default 40)
run in one worker process pinned to the other core for D seconds. The probe's CPU is read from /proc over the
steady window only (every session flowing, by the gateway's truth; ramp-up and teardown excluded) and reported
as CPU ms per session-second. Each session's latency is compared with the gateway's truth
(``/debug/streams/{id}`` residence_ms_median) and the median error reported, with fps and delivery (frames the
tester received over frames the gateway sent its viewers).

With ``--profile`` the worker runs under cProfile from the moment every session started until the first one
ends, and the top functions by tottime are grouped into the probe's cost centres (packetization/sending,
SRTP, receive tap, decode windows, latency/timing, status polling, timers/event loop, other), as percentages of
the profiled time, with the cumulative time under each side's entry point (aiortc's send loop, its receive
loop, the decode windows). cProfile roughly doubles the worker's cost, so profile at about half the N that is
measured (the worker must not saturate, or the profile shows a backlog), and never quote a ``--profile`` run's
CPU figure. aiortc's clock helpers (``clock.py``: NTP times per sent packet, a datetime per received one) are
called from both sides and land in "other".

With ``--floor`` the same run also measures the data path alone: N bare pairs in one worker on the same core,
each a lean sender (``fleet.leanrtp``) sending the clip to a lean receiver's frame tap over loopback, with no
gateway, no session logic and no decoding; their CPU ms per pair-second (sending and receiving, what a probe
session's RTP costs) is printed beside the probe's, as a share of it.

``--parts`` splits both figures by leaving one part out per run, each run otherwise the same (the pairs: four
runs in all, the probe: four; about eight times as long as one run). The pairs leave out, over the measured
span, the receive side's work, then the packets, then the frame timers: what each saved splits the floor into
the connections' upkeep (ICE, DTLS, RTCP), the frame timers, and the packets, of which the receive side's
work in Python and the kernel's (system time); leaving out the packets also leaves out the payloads' lookup
(VP8: the picture ID put in each). The probe leaves out, from the start, its decoding (the latency calibration
and the black-output checks; with nothing decoded, calibration keeps wanting frames until it gives up at 15 s, at
no cost beyond the calls) and then its status reads: the probe's CPU is then the data path, decoding, status
reads, and the rest (the frame bookkeeping, timing, the session's timers). One more run leaves out the black-output
checks alone (the latency calibration still decodes): what they cost, within decoding. Each part is the difference of two
single runs, so it carries both runs' spread (about 10 % of each).

    python bench/probe_profile.py [--n 40] [--duration 12] [--codec h264|vp8] [--profile [PSTATS_PATH]] [--floor | --parts]

Prints a few lines and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import os
import platform
import pstats
import signal
import subprocess
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sessions_per_core import (  # noqa: E402
    STATUS_EVERY_S, WINDOW_MARGIN_S, WINDOW_MIN_S, end_tree, gateway_config, steady_window)

SIZE, FPS = 512, 30
STAGGER_PER_SESSION_S = 0.05    # sessions start spread out, as a fleet worker's would
STAGGER_MAX_S = 4.0
# a session's pacing: how late its frames left on average and at worst, its send jitter, and the output frames
# and jitter intervals its own stalls and late sends had excused (shared send instants put sends behind others)
PACING = ("pacing_late_ms_mean", "pacing_late_ms_max", "tester_send_jitter_coeff", "tester_stall_frames",
          "jitter_suspect_intervals")
PAIRS_FLOWING_S = 30.0          # every bare pair delivers its first frame within this, or the floor is not measured
PAIRS_MIN_FPS = 29.5            # a floor measured below this (the pairs' worker saturated) is no floor
TOP_FUNCTIONS = 25

# cost centres, first match wins: (name, substrings of "file:function")
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("srtp", ("pylibsrtp", "srtp_protect", "srtp_unprotect")),
    ("decode_windows", ("fleet/probe/output.py", "codeccontext", "av.codec", "av.packet", "av.video")),
    ("receive_tap", ("fleet/rtp.py", "rtcrtpreceiver", "jitterbuffer", "aiortc/rtp.py:parse", "aiortc/rtp.py:unpack",
                     "aiortc/codecs/__init__.py:depayload", "codecs/h264.py:parse", "codecs/vpx.py:parse",
                     "rate.py", "stats", "recvfrom", "_recv_next", "datagram_received")),
    ("packetization_sending", ("fleet/media.py", "rtcrtpsender", "codecs/h264.py", "codecs/vpx.py", "aiortc/rtp.py",
                               "rtcdtlstransport.py:_send_rtp", "aioice", "sendto")),
    ("latency_timing", ("fleet/probe/latency.py", "fleet/probe/timing.py", "numpy", "statistics", "bisect")),
    ("status_polling", ("fleet/probe/status.py", "httpx", "httpcore", "h11", "json", "ssl", "anyio")),
    ("timers_event_loop", ("asyncio", "selectors", "select", "epoll", "fleet/probe/looplag.py", "pyee", "heapq")),
)
# entry points whose cumulative time splits the session's work by side
ENTRY_POINTS = {"send (aiortc _run_rtp, all it calls)": "rtcrtpsender.py:_run_rtp",
                "receive (aiortc _recv_next: unprotect, demux, tap, jitter buffer)": "rtcdtlstransport.py:_recv_next",
                "decode windows (OutputWatch._decode)": "fleet/probe/output.py:_decode",
                "rtcp (both sides)": "_run_rtcp",
                "status parsing (StatusReader.read; the HTTP is in the groups)": "fleet/probe/status.py:read"}


# --- the worker: N probe sessions, optionally under cProfile ---------------------------------

def group_of(where: str) -> str:
    w = where.lower()
    for name, keys in GROUPS:
        if any(k in w for k in keys):
            return name
    return "other"


def profile_breakdown(prof: cProfile.Profile) -> dict:
    """tottime per cost centre (percent of the profile's total) and the top functions by tottime."""
    stats = pstats.Stats(prof)
    rows, cumulative = [], dict.fromkeys(ENTRY_POINTS, 0.0)
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{file.replace(str(ROOT) + '/', '')}:{func}"
        rows.append((tt, where))
        for name, key in ENTRY_POINTS.items():
            if where.endswith(key) or (key.startswith("_") and where.endswith(":" + key)):
                cumulative[name] += ct
    total = sum(tt for tt, _ in rows) or 1.0
    groups: dict[str, float] = {}
    for tt, where in rows:
        g = group_of(where)
        groups[g] = groups.get(g, 0.0) + tt
    rows.sort(reverse=True)
    return {"total_s": round(total, 3),
            "entry_points_cumulative_pct": {k: round(100 * v / total, 1) for k, v in cumulative.items()},
            "groups_pct": {g: round(100 * t / total, 1) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"tottime_s": round(tt, 4), "fn": w, "group": group_of(w)} for tt, w in rows[:TOP_FUNCTIONS]]}


async def sessions(url: str, n: int, duration: float, stagger: float, codec: str, profile: str,
                   phases: int, status_every: float) -> tuple[list[dict], dict | None]:
    from fleet.media import synthetic_clip
    from fleet.probe.session import ProbeOptions, ProbeSpec, PromptChange, new_http_client, run_probe
    from fleet.probe.types import EVENT_PREFIX

    clip = synthetic_clip(SIZE, SIZE, FPS, codec=codec)
    options = ProbeOptions(status_every_s=status_every, send_phases=phases)
    client = new_http_client()
    # CPU time, not wall time: the event loop's idle wait in epoll is no cost of the sessions
    prof = cProfile.Profile(time.process_time) if profile else None
    started = 0
    ended = 0

    async def one(i: int) -> dict:
        nonlocal started, ended
        await asyncio.sleep(stagger * i / n)
        spec = ProbeSpec(url, "livepeer", "streamdiffusion", clip, (PromptChange(0, {"prompt": "bench"}),),
                         duration_s=duration, options=options)
        started += 1
        if prof is not None and started == n:
            prof.enable()   # every session started: from here on, the steady state
        try:
            r = await run_probe(spec, client=client)
        finally:
            ended += 1
            if prof is not None and ended == 1 and started == n:
                prof.disable()
        aligned = next((t for t, kind, data in r.events if kind == EVENT_PREFIX + "latency_aligned" and data.get("exact")),
                       None)  # not when calibration gave up
        return {"stream": r.stream_id, "outcome": r.outcome, "error": r.error_class, "fps": r.output_fps,
                "received": r.frames_received, "latency_ms": r.g2g_latency_ms, "decoded": r.decoded_frames,
                "latency_aligned_at_s": aligned, "reasons": r.reasons, **{k: getattr(r, k) for k in PACING}}

    try:
        out = list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        if prof is not None:
            prof.disable()
        await client.aclose()
    if prof is None:
        return out, None
    if profile != "-":
        prof.dump_stats(profile)  # for pstats: callers, callees
    return out, profile_breakdown(prof)


def without(part: str) -> list[bool]:
    """Patch this worker to leave out ``part`` once the flag returned is set. Of the lean data path (bare
    pairs): "receive" (media datagrams dropped as they arrive: no SRTP, parsing, report duties or frame tap),
    "packets" (frames paced but no packet built or sent), "pacing" (no frame timer at all). Of a probe
    session: "decoding" (no frame decoded: no latency, no checks), "checks" (no black-output check asked: the
    latency calibration and a prompt switch's window still decode), "status" (no status read while the session
    runs). Empty: nothing."""
    import fleet.leanrtp as leanrtp
    import fleet.leansend as leansend
    from fleet.media import ClipPayloads, PacketTrack
    from fleet.probe import session
    from fleet.probe.output import OutputWatch

    flag = [False]
    if part == "decoding":
        decode = OutputWatch._decode
        OutputWatch._decode = lambda self, *a: None if flag[0] else decode(self, *a)  # type: ignore[method-assign]
    elif part == "checks":
        check = OutputWatch.check_window
        OutputWatch.check_window = lambda self, *a, **k: None if flag[0] else check(self, *a, **k)  # type: ignore[method-assign]
    elif part == "status":
        poll = session._Probe._poll_status

        async def no_poll(self, client):
            return None if flag[0] else await poll(self, client)
        session._Probe._poll_status = no_poll  # type: ignore[method-assign]
    elif part == "receive":
        install = leanrtp._skip_stun

        def skip_stun(connection, component, data_received):
            if not install(connection, component, data_received):
                return False
            protocol = connection._nominated[component].protocol
            inner = protocol.datagram_received

            def gated(data: bytes, addr) -> None:  # media dropped as it arrives, before its stamp is asked for
                if not flag[0] or not (data and 127 < data[0] < 192) or 192 <= data[1] <= 223:  # RTCP still handled
                    inner(data, addr)
            protocol.datagram_received = gated
            return True
        leanrtp._skip_stun = skip_stun
    elif part == "packets":  # the frame's payloads (VP8: a picture ID put in each), their headers, SRTP, sending
        frame, payloads, picture_id = leansend._LeanSender.frame, ClipPayloads.frame, leansend._LeanSender._picture_id
        leansend._LeanSender.frame = lambda self, *a: None if flag[0] else frame(self, *a)  # type: ignore[method-assign]
        ClipPayloads.frame = lambda self, *a: () if flag[0] else payloads(self, *a)  # type: ignore[method-assign]
        leansend._LeanSender._picture_id = lambda self, *a: 0 if flag[0] else picture_id(self, *a)  # type: ignore[method-assign]
    elif part == "pacing":
        next_frame = PacketTrack.next_frame

        async def paused(self):
            if flag[0]:
                await asyncio.get_running_loop().create_future()  # until the pair closes
            return await next_frame(self)
        PacketTrack.next_frame = paused  # type: ignore[method-assign]
    return flag


async def bare_pairs(n: int, duration: float, codec: str, stagger: float, part: str = "", phases: int = 0) -> dict:
    """N lean sender -> lean receiver pairs over loopback, started ``stagger`` seconds apart in all (as the
    probe's sessions are): the CPU of their steady state (from the moment every pair delivered a frame, for
    ``duration`` less the stagger and a margin), per pair-second, and the frames received per pair-second.
    With ``part``, that part of the data path is left out over the measured span (``without``)."""
    from fleet.leanrtp import lean_sender
    from fleet.media import H264_PROFILE_LEVEL_ID, PacketTrack, synthetic_clip
    from fleet.rtp import FrameTap
    from fleet.webrtc import codecs_named, loopback_pair

    leave_out = without(part)
    clip = synthetic_clip(SIZE, SIZE, FPS, codec=codec)
    named = codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID) if codec == "h264" else codecs_named("video", "VP8")
    frames = [0] * n
    pcs: list = []

    async def start(i: int) -> None:
        await asyncio.sleep(stagger * i / n)

        def tap(receiver) -> None:
            def count(_frame) -> None:
                frames[i] += 1
            FrameTap(receiver, count, decode=False, bandwidth_feedback=False)
        a, b, _, _ = await loopback_pair(PacketTrack(clip, phases=phases), named, on_sender=lean_sender, on_receiver=tap)
        pcs.extend((a, b))

    loop = asyncio.get_running_loop()
    try:
        async with asyncio.TaskGroup() as starting:  # one failure cancels the other starts
            for i in range(n):
                starting.create_task(start(i))
        deadline = loop.time() + PAIRS_FLOWING_S
        while not all(frames):
            if loop.time() > deadline:
                raise SystemExit(f"{frames.count(0)} of {n} pairs delivered no frame in {PAIRS_FLOWING_S:.0f} s")
            await asyncio.sleep(0.05)
        measure_s = max(WINDOW_MIN_S, duration - stagger - WINDOW_MARGIN_S)
        leave_out[0] = bool(part)
        c0, s0, f0, t0 = time.process_time(), os.times().system, sum(frames), time.monotonic()
        await asyncio.sleep(measure_s)  # the measured span itself, not a wait for anything
        c1, s1, f1, t1 = time.process_time(), os.times().system, sum(frames), time.monotonic()
    finally:
        for pc in pcs:
            await pc.close()
    per_pair_s = 1000 / (t1 - t0) / n
    return {"cpu_ms_per_pair_s": round((c1 - c0) * per_pair_s, 2), "kernel_ms_per_pair_s": round((s1 - s0) * per_pair_s, 2),
            "fps": round((f1 - f0) / (t1 - t0) / n, 2)}


def bare_pairs_run(args: argparse.Namespace, cpu: int, part: str = "") -> dict:
    """``bare_pairs`` in a worker of its own pinned to ``cpu``, ``part`` left out (``without``)."""
    stagger = min(STAGGER_MAX_S, args.n * STAGGER_PER_SESSION_S)
    cmd = [sys.executable, __file__, "--worker", "--pairs", "--loop", args.loop, "--codec", args.codec, "--n", str(args.n),
           "--duration", str(args.duration), "--cpu", str(cpu), "--stagger", str(stagger), "--without", part]
    cmd += ["--send-phases", str(args.send_phases)] * (args.send_phases is not None)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration * 4 + 120)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"pairs worker: no answer in {args.duration * 4 + 120:.0f} s") from None
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise SystemExit(f"pairs worker failed (exit {done.returncode}): {lines[-1]}")
    out: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def floor_parts(full: dict, without_part: dict[str, dict]) -> dict[str, float]:
    """The bare pairs' CPU per pair-second split by what leaving each part out saved: the connections' upkeep
    (ICE, DTLS, RTCP: what is left with no frame timer), the frame timers, the packets (both sides), and
    within the packets, the receive side's work in Python and the kernel's share (system time)."""
    cpu = {p: r["cpu_ms_per_pair_s"] for p, r in without_part.items()}
    return {"upkeep": round(cpu["pacing"], 2),
            "pacing": round(cpu["packets"] - cpu["pacing"], 2),
            "packets": round(full["cpu_ms_per_pair_s"] - cpu["packets"], 2),
            "of_which_receive_work": round(full["cpu_ms_per_pair_s"] - cpu["receive"], 2),
            "of_which_kernel": round(full["kernel_ms_per_pair_s"] - without_part["packets"]["kernel_ms_per_pair_s"], 2)}


def probe_parts(full: float, floor: float, without_part: dict[str, float | None]) -> dict[str, float | None]:
    """The probe's CPU per session-second beyond the data path, split by what leaving each part out saved."""
    parts = {p: None if v is None else round(full - v, 2) for p, v in without_part.items()}
    known = [v for v in parts.values() if v is not None]
    return {"data_path": floor, **parts,
            "the_rest": round(full - floor - sum(known), 2) if len(known) == len(parts) else None}


def worker(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {args.cpu})
    from fleet.probe.types import ProbeOptions
    from fleet.webrtc import use_host_addresses

    use_host_addresses(["127.0.0.1"])
    if args.loop == "uvloop":
        import uvloop  # the loop Ray gives the fleet's runner (an async actor) when uvloop is installed
        uvloop.install()
    phases = ProbeOptions().send_phases if args.send_phases is None else args.send_phases
    if args.pairs:
        print(json.dumps(asyncio.run(bare_pairs(args.n, args.duration, args.codec, args.stagger, args.without, phases))))
        return
    without(args.without)[0] = True  # a probe's part is left out from the start
    out, prof = asyncio.run(sessions(args.url, args.n, args.duration, args.stagger, args.codec, args.profile, phases,
                                     args.status_every))
    print(json.dumps({"sessions": out, "profile": prof, "send_phases": phases}))


# --- the driver ------------------------------------------------------------------------------

def pacing(sessions: list[dict]) -> dict:
    """What sharing send instants cost the sessions' sends (``PACING``): the median and p95 over sessions."""
    out: dict = {}
    for key in PACING:
        v = sorted(s[key] for s in sessions if s[key] is not None)
        out[f"{key}_p50"], out[f"{key}_p95"] = (v[len(v) // 2], v[len(v) * 95 // 100]) if v else (None, None)
    return out


def run(url: str, codec: str, n: int, duration: float, cpu: int, profile: str, gateway_pid: int, loop: str,
        part: str = "", phases: int | None = None, status_every: float = STATUS_EVERY_S) -> dict:
    import httpx

    stagger = min(STAGGER_MAX_S, n * STAGGER_PER_SESSION_S)
    window_s = max(WINDOW_MIN_S, duration - stagger - WINDOW_MARGIN_S)
    with httpx.Client(timeout=30) as c:
        known = {s["name"] for s in c.get(f"{url}/debug/streams").json()["streams"]}
        cmd = [sys.executable, __file__, "--worker", "--loop", loop, "--codec", codec, "--url", url, "--n", str(n),
               "--duration", str(duration), "--cpu", str(cpu), "--stagger", str(stagger), "--without", part]
        cmd += ["--profile", profile] * bool(profile) + ["--send-phases", str(phases)] * (phases is not None)
        cmd += ["--status-every", str(status_every)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            window = steady_window(c, url, known, n, window_s, proc, gateway_pid)
            out, err = proc.communicate(timeout=duration * 4 + 120)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"worker: no answer in {duration * 4 + 120:.0f} s") from None
        finally:
            end_tree(proc)
        if proc.returncode != 0:
            raise SystemExit(f"worker failed (exit {proc.returncode}): {(err.strip() or 'no output').splitlines()[-1]}")
        data = json.loads(out.strip().splitlines()[-1])
        streams = {s["name"]: s for s in c.get(f"{url}/debug/streams").json()["streams"] if s["name"] not in known}
        sent = received = 0
        errors = []
        for s in data["sessions"]:
            t = streams.get(s["stream"])
            if t is None:
                continue
            sent += sum(v["frames_sent"] for v in t["viewers"])
            received += s["received"]
            if s["latency_ms"] is not None:
                truth = c.get(f"{url}/debug/streams/{t['id']}").json()["residence_ms_median"]
                if truth is not None:
                    errors.append(abs(s["latency_ms"] - truth))
    fps = sorted(s["fps"] or 0.0 for s in data["sessions"])
    errors.sort()
    r: dict = {"codec": codec, "n": n, "duration_s": duration, "loop": loop, "profiled": bool(profile),
               "send_phases": data["send_phases"], "status_every_s": status_every, **pacing(data["sessions"]),
               "outcomes": sorted({s["outcome"] for s in data["sessions"]}),
               "reasons": dict(collections.Counter(x for s in data["sessions"] for x in s["reasons"])),
               "delivered": round(received / sent, 4) if sent else None,
               "fps_p50": round(fps[len(fps) // 2], 2), "fps_p10": round(fps[len(fps) // 10], 2),
               "latency_error_ms_p50": round(errors[len(errors) // 2], 3) if errors else None,
               "latency_error_ms_max": round(errors[-1], 3) if errors else None,
               "latency_samples": len(errors),
               # decoding per session: the latency calibration (every frame until aligned) and the black-output checks
               "decoded_per_session_p50": statistics.median_high(s["decoded"] for s in data["sessions"]),
               "latency_aligned_at_s_p50": statistics.median_high(aligned) if (aligned := [
                   s["latency_aligned_at_s"] for s in data["sessions"] if s["latency_aligned_at_s"] is not None]) else None}
    if window is None:
        r["window"] = "the sessions never all flowed at once, or the worker ended inside the window"
    else:
        r.update(cpu_ms_per_session_s=round(1000 * window["tester_cpu_s"] / window["window_s"] / n, 2),
                 tester_load=round(window["tester_cpu_s"] / window["window_s"], 3),
                 gateway_load=round(window["gateway_cpu_s"] / window["window_s"], 3), window_s=round(window["window_s"], 2),
                 window_all_flowing=window["all_flowing_at_end"])
    if data.get("profile"):
        r["profile"] = data["profile"]
    return r


def probe_run(args: argparse.Namespace, cpus: list[int], part: str = "") -> dict:
    """The probe sessions against a fresh reference gateway (pinned to the last core; the worker to the first),
    ``part`` left out (``without``)."""
    from fleet.gateway.process import GatewayProcess

    with GatewayProcess(config=gateway_config()) as gw:
        assert gw.proc is not None and gw.url is not None
        os.sched_setaffinity(gw.proc.pid, {cpus[-1]})
        return run(gw.url, args.codec, args.n, args.duration, cpus[0], "" if part else args.profile, gw.proc.pid,
                   args.loop, part, args.send_phases, args.status_every)


def floor_run(args: argparse.Namespace, cpu: int, r: dict, parts: bool) -> dict:
    """The bare pairs beside the probe's run ``r``; with ``parts``, three more runs that split their CPU."""
    floor = bare_pairs_run(args, cpu)
    if floor["fps"] < PAIRS_MIN_FPS:
        floor["share_of_probe"] = None
        floor["refused"] = f"the pairs ran at {floor['fps']} fps, under {PAIRS_MIN_FPS}: their core saturated"
        return floor
    if r.get("cpu_ms_per_session_s"):
        floor["share_of_probe"] = round(floor["cpu_ms_per_pair_s"] / r["cpu_ms_per_session_s"], 3)
    if parts:
        floor["parts"] = floor_parts(floor, {p: bare_pairs_run(args, cpu, p) for p in ("receive", "packets", "pacing")})
    return floor


def report(r: dict) -> None:
    print(f"{r['codec']} n={r['n']}: {r.get('cpu_ms_per_session_s')} CPU ms per session-second, "
          f"latency error p50 {r['latency_error_ms_p50']} ms, fps p50 {r['fps_p50']}, delivered {r['delivered']}")
    print(f"  per session: {r['decoded_per_session_p50']} frames decoded, latency aligned {r['latency_aligned_at_s_p50']} s "
          "after its start (p50 of exact alignments)")
    if "data_path_only" in r:
        f = r["data_path_only"]
        print(f"data path alone ({r['n']} bare pairs): {f['cpu_ms_per_pair_s']} CPU ms per pair-second at {f['fps']} fps, "
              f"{f.get('share_of_probe')} of the probe's" + (f" ({f['refused']})" if f.get("refused") else ""))
        if "parts" in f:
            print("  its parts: " + ", ".join(f"{k.replace('_', ' ')} {v} ms" for k, v in f["parts"].items()))
    if "parts_refused" in r:
        print(f"the probe's parts: not measured ({r['parts_refused']})")
    if "parts" in r:
        print("the probe's parts: " + ", ".join(f"{k.replace('_', ' ')} {v} ms" for k, v in r["parts"].items()))
    if "profile" in r:
        for g, pct in r["profile"]["groups_pct"].items():
            print(f"  {g:24} {pct:5.1f} %")
        for g, pct in r["profile"]["entry_points_cumulative_pct"].items():
            print(f"  cumulative {pct:5.1f} %  {g}")
        for row in r["profile"]["top"]:
            print(f"    {row['tottime_s']:8.3f} s  {row['group']:22} {row['fn']}")
    r["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} {platform.python_version()}"
    print(json.dumps(r))


def main() -> None:
    from fleet.probe.types import ProbeOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stagger", type=float, default=2.0, help=argparse.SUPPRESS)
    ap.add_argument("--pairs", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--without", default="", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=40, help="concurrent probe sessions")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per session")
    ap.add_argument("--codec", choices=("h264", "vp8"), default="h264")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="the worker's event loop: uvloop (what Ray runs the fleet's runner on) or asyncio's own")
    ap.add_argument("--floor", action="store_true",
                    help="also run N bare lean sender->receiver pairs over loopback: the data path's own CPU")
    ap.add_argument("--parts", action="store_true",
                    help="--floor, and five more runs, each leaving one part out: the pairs' parts and the probe's")
    ap.add_argument("--send-phases", type=int, default=None, metavar="K",
                    help="the sessions' shared send instants a frame period (0: a phase each; default: the probe's, "
                         "ProbeOptions.send_phases); the bare pairs of --floor and --parts send so too")
    ap.add_argument("--status-every", type=float, default=STATUS_EVERY_S, metavar="S",
                    help=f"seconds between a session's status reads (default {STATUS_EVERY_S:g}, as bench/sessions_per_core.py; "
                         f"the probe's own default is {ProbeOptions.status_every_s:g})")
    ap.add_argument("--profile", nargs="?", const="-", default="",
                    help="run the worker under cProfile and group its time; with a path, also dump the pstats there")
    args = ap.parse_args()
    # a kill (SIGTERM) unwinds as an exception: the gateway and the workers started here are ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker:
        worker(args)
        return
    if args.parts and args.profile:
        ap.error("--parts compares CPU figures and --profile roughly doubles them: use one at a time")
    cpus = sorted(os.sched_getaffinity(0))
    r = probe_run(args, cpus)
    if args.floor or args.parts:
        r["data_path_only"] = floor_run(args, cpus[0], r, args.parts)
    if args.parts and not r.get("cpu_ms_per_session_s"):
        r["parts_refused"] = "the probe's run gave no CPU figure (no steady window)"
    elif args.parts and "refused" in r["data_path_only"]:
        r["parts_refused"] = "the bare pairs' run was refused"
    elif args.parts:
        left_out = {p: probe_run(args, cpus, p).get("cpu_ms_per_session_s") for p in ("decoding", "status")}
        r["parts"] = probe_parts(r["cpu_ms_per_session_s"], r["data_path_only"]["cpu_ms_per_pair_s"], left_out)
        checks = probe_run(args, cpus, "checks").get("cpu_ms_per_session_s")  # a share of decoding, not summed
        r["parts"]["decoding_of_which_black_checks"] = None if checks is None else round(r["cpu_ms_per_session_s"] - checks, 2)
    report(r)


if __name__ == "__main__":
    main()
