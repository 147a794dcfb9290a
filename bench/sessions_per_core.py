"""How many 512x512 @ 30 fps sessions one core sustains, H.264 and VP8: the fleet's probe against a naive client.

The reference gateway runs in relay mode in its own process, pinned to one core; each ramp step
runs N concurrent sessions in a fresh worker process pinned to the other core. A step is
sustained when the tester received >= 99 % of the frames the gateway sent, the median session's
output fps is >= 29.5, and (for the probe) the median session's latency is within 5 ms of the
gateway's truth. The naive client is an aiortc ``VideoStreamTrack`` that encodes live and
decodes every received frame; it has no latency method, so only frames and fps judge it. Each
codec is ramped for both (H.264 is what go-livepeer takes; the gateway accepts VP8 here only for
this comparison).

    python bench/sessions_per_core.py [--duration 10] [--max 200] [--codecs h264,vp8] [--quick]

Prints a line per step and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DELIVERED_MIN = 0.99
FPS_MIN = 29.5
LATENCY_ERROR_MAX_MS = 5.0
SIZE, FPS = 512, 30.0


def gateway_config():
    from fleet.gateway.config import Delay, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec

    profile = GpuProfile(name="Bench GPU", fps_cap=60, cold_start_s=0, warmup_frames=0, prompt_cost=0,
                         delay=Delay(dist="fixed", mean_ms=50.0, jitter_ms=0.0))
    gpus = tuple(Gpu(id=f"G{i}", profile="p", slots={"streamdiffusion": 64}) for i in range(4))
    return GatewayConfig(profiles={"p": profile}, relay=True, max_streams=256, port=0, video_codecs=("H264", "VP8"),
                         orchestrators=(OrchestratorSpec(address="0xbench", uri="https://bench:8935", gpus=gpus),))


# --- the worker: N sessions in this process ---------------------------------------------------

async def probe_sessions(url: str, n: int, duration: float, stagger: float, codec: str) -> list[dict]:
    from fleet.media import synthetic_clip
    from fleet.probe.session import ProbeOptions, ProbeSpec, PromptChange, new_http_client, run_probe

    clip = synthetic_clip(SIZE, SIZE, FPS, codec=codec)
    client = new_http_client()

    async def one(i: int) -> dict:
        await asyncio.sleep(stagger * i / n)
        spec = ProbeSpec(url, "livepeer", "streamdiffusion", clip, (PromptChange(0, {"prompt": "bench"}),),
                         duration_s=duration, options=ProbeOptions(status_every_s=5.0))
        r = await run_probe(spec, client=client)
        return {"stream": r.stream_id, "outcome": r.outcome, "error": r.error_class, "fps": r.output_fps,
                "received": r.frames_received, "latency_ms": r.g2g_latency_ms, "decoded": r.decoded_frames,
                "late_ms_max": r.pacing_late_ms_max}

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def naive_sessions(url: str, n: int, duration: float, stagger: float, codec: str) -> list[dict]:
    import av
    import httpx
    import numpy as np
    from aiortc import RTCSessionDescription, VideoStreamTrack
    from aiortc.mediastreams import MediaStreamError

    from fleet.webrtc import codecs_named, new_peer_connection

    class Live(VideoStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            level = 56 if (self.count // 15) % 2 == 0 else 176
            img = np.full((SIZE * 3 // 2, SIZE), 128, np.uint8)
            img[:SIZE] = level
            img[SIZE // 2: SIZE // 2 + 64, (self.count * 4) % (SIZE - 64):][:, :64] = 235
            frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
            frame.pts, frame.time_base = pts, time_base
            self.count += 1
            return frame

    async def one(i: int) -> dict:
        await asyncio.sleep(stagger * i / n)
        name = f"naive_{os.getpid()}_{i}"  # no dash: go-livepeer's WHEP path parser splits on it
        pc_in, pc_out = new_peer_connection(), new_peer_connection()
        named = {"h264": "H264", "vp8": "VP8"}[codec]
        pc_in.addTransceiver(Live(), direction="sendonly").setCodecPreferences(codecs_named("video", named))
        pc_out.addTransceiver("video", direction="recvonly").setCodecPreferences(codecs_named("video", named))
        arrivals: list[float] = []

        @pc_out.on("track")
        def on_track(track) -> None:
            async def read() -> None:
                while True:
                    try:
                        frame = await track.recv()
                    except MediaStreamError:
                        return
                    frame.to_ndarray(format="yuv420p")  # what a naive client does with every frame
                    arrivals.append(time.monotonic())
            asyncio.ensure_future(read())

        try:
            async with httpx.AsyncClient(timeout=30) as c:
                await pc_in.setLocalDescription(await pc_in.createOffer())
                resp = await c.post(f"{url}/live/video-to-video/{name}/whip?pipeline=streamdiffusion", content=pc_in.localDescription.sdp,
                                    headers={"Content-Type": "application/sdp"})
                await pc_in.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
                await pc_out.setLocalDescription(await pc_out.createOffer())
                deadline = time.monotonic() + 10
                while True:  # 404 until the gateway has selected an orchestrator (after its 201)
                    resp2 = await c.post(resp.headers["Livepeer-Playback-URL"], content=pc_out.localDescription.sdp,
                                         headers={"Content-Type": "application/sdp"})
                    if resp2.status_code != 404 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)  # a retry interval, as a WHEP player has
                resp2.raise_for_status()
                await pc_out.setRemoteDescription(RTCSessionDescription(resp2.text, "answer"))
                await asyncio.sleep(duration)  # the session's length: load, not synchronisation
                fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
                return {"stream": name, "outcome": "ok", "fps": fps, "received": len(arrivals), "latency_ms": None}
        finally:  # closing the peer connections ends the stream (go-livepeer has no DELETE)
            await pc_out.close()
            await pc_in.close()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def worker(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {args.cpu})
    from fleet.webrtc import use_host_addresses

    use_host_addresses(["127.0.0.1"])
    run = probe_sessions if args.mode == "probe" else naive_sessions
    t0, c0 = time.monotonic(), time.process_time()
    sessions = asyncio.run(run(args.url, args.n, args.duration, args.stagger, args.codec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"sessions": sessions, "cpu_s": time.process_time() - c0, "wall_s": time.monotonic() - t0,
                      "max_rss_mb": usage.ru_maxrss / 1024}))


# --- the driver -------------------------------------------------------------------------------

def step(url: str, mode: str, codec: str, n: int, duration: float, cpu: int) -> dict:
    import httpx

    out = subprocess.run([sys.executable, __file__, "--worker", "--mode", mode, "--codec", codec, "--url", url,
                          "--n", str(n),
                          "--duration", str(duration), "--cpu", str(cpu), "--stagger", str(min(4.0, n * 0.05))],
                         capture_output=True, text=True, timeout=duration * 4 + 120)
    if out.returncode != 0:
        return {"n": n, "ok": False, "error": out.stderr.strip().splitlines()[-1:] or ["worker failed"]}
    data = json.loads(out.stdout.strip().splitlines()[-1])
    sent = received = 0
    errors = []
    with httpx.Client(timeout=30) as c:
        streams = {s["name"]: s for s in c.get(f"{url}/debug/streams").json()["streams"]}
        for s in data["sessions"]:
            t = streams.get(s["stream"])
            if t is None:
                continue
            sent += sum(v["frames_sent"] for v in t["viewers"])  # from each viewer's first keyframe on
            received += s["received"]
            if s["latency_ms"] is not None:
                truth = c.get(f"{url}/debug/streams/{t['id']}").json()["residence_ms_median"]
                if truth is not None:
                    errors.append(abs(s["latency_ms"] - truth))
    fps = sorted(s["fps"] or 0.0 for s in data["sessions"])
    delivered = received / sent if sent else 0.0
    median = lambda xs: xs[len(xs) // 2] if xs else None  # noqa: E731
    err50 = median(sorted(errors))
    ok = (delivered >= DELIVERED_MIN and median(fps) >= FPS_MIN
          and all(s["outcome"] in ("ok", "degraded") for s in data["sessions"])
          and (mode == "naive" or (err50 is not None and err50 <= LATENCY_ERROR_MAX_MS)))
    return {"n": n, "ok": ok, "delivered": round(delivered, 4), "fps_p50": round(median(fps), 2),
            "fps_p10": round(fps[len(fps) // 10], 2), "latency_error_ms_p50": err50 and round(err50, 3),
            "cpu_per_session_ms_per_s": round(1000 * data["cpu_s"] / data["wall_s"] / n, 2),
            "max_rss_mb": round(data["max_rss_mb"]), "outcomes": sorted({s["outcome"] for s in data["sessions"]})}


def ramp(url: str, mode: str, codec: str, start: int, grow: int, limit: int, duration: float,
         cpu: int) -> tuple[int, dict | None]:
    best, best_step, n, bad = 0, None, start, None
    while n <= limit:
        r = step(url, mode, codec, n, duration, cpu)
        print(f"{codec:4} {mode:5} n={n:4}  {json.dumps(r)}", flush=True)
        if not r["ok"]:
            bad = n
            break
        best, best_step = n, r
        n += grow
    if bad is not None and bad - best > max(2, grow // 4):  # refine between the last good and the first bad
        lo, hi = best, bad
        while hi - lo > max(2, grow // 4):
            mid = (lo + hi) // 2
            r = step(url, mode, codec, mid, duration, cpu)
            print(f"{codec:4} {mode:5} n={mid:4}  {json.dumps(r)}", flush=True)
            if r["ok"]:
                lo, best, best_step = mid, mid, r
            else:
                hi = mid
    return best, best_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("probe", "naive"), default="probe", help=argparse.SUPPRESS)
    ap.add_argument("--codec", choices=("h264", "vp8"), default="h264", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stagger", type=float, default=2.0, help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per session at each step")
    ap.add_argument("--max", type=int, default=200, help="most sessions tried")
    ap.add_argument("--codecs", default="h264,vp8", help="codecs to ramp, comma-separated (h264, vp8)")
    ap.add_argument("--quick", action="store_true", help="coarser steps (a faster, rougher answer)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from fleet.gateway.process import GatewayProcess

    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(set(codecs) - {"h264", "vp8"})
    if unknown or not codecs:
        ap.error(f"--codecs: {', '.join(unknown) or 'none given'}; allowed: h264, vp8")
    cpus = sorted(os.sched_getaffinity(0))
    probe_cpu, gateway_cpu = cpus[0], cpus[-1]
    figures = {}
    with GatewayProcess(config=gateway_config()) as gw:
        os.sched_setaffinity(gw.proc.pid, {gateway_cpu})
        grow = 40 if args.quick else 20
        for codec in codecs:
            probe_n, probe_step = ramp(gw.url, "probe", codec, 20, grow, args.max, args.duration, probe_cpu)
            naive_n, naive_step = ramp(gw.url, "naive", codec, 2, 4 if args.quick else 2, args.max, args.duration,
                                       probe_cpu)
            figures[codec] = {
                "sessions_per_core": probe_n, "baseline_sessions_per_core": naive_n,
                "ratio": round(probe_n / naive_n, 2) if naive_n else None,
                "latency_error_ms_p50": probe_step and probe_step["latency_error_ms_p50"],
                "probe_cpu_ms_per_session_s": probe_step and probe_step["cpu_per_session_ms_per_s"],
                "baseline_cpu_ms_per_session_s": naive_step and naive_step["cpu_per_session_ms_per_s"],
                "media": f"{SIZE}x{SIZE}@{FPS:g} {codec.upper()}"}
    print(json.dumps({
        **figures, "gateway": "reference, relay mode, its own core",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
                   f"{platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
