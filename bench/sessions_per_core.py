"""How many 512x512 @ 30 fps sessions one core sustains, H.264 and VP8: the fleet's probe against a naive
aiortc client and headless Chromium publisher+viewer pairs, with both sides' CPU measured at every step.

The reference gateway runs in relay mode in its own process, pinned to one core; each ramp step runs N
concurrent sessions in a fresh tester process (for Chromium: chromedriver and every browser process it
starts) pinned to the other core. The probe gets a known share of its core (a cgroup CPU quota,
``--probe-share``, default 0.35; "sessions per core" is the sessions it sustains divided by that share): the
gateway costs about twice what the probe does per session (11 ms per session-second against 5 in relay
mode), so with half a core or more the probe would outlast the gateway's core, and the probe's side is to
saturate first. Every step runs against a fresh gateway, whose ingest
buffer (``INGEST_BUFFER_MS``) keeps a tester's short stalls from reaching its runner model, and whose 17 GPUs
answer with fixed delays a step apart across a frame period (``DELAY_PHASES``): the outputs of a tester's
sessions come back spread over the period, as from a network's GPUs, whatever phases its inputs left at. At every step
both sides' CPU is read from /proc over the steady window only (every session of the step flowing, by the
gateway's truth; ramp-up and teardown excluded), each as a fraction of what it has (the tester: its share;
the gateway: its core), and the step says which side saturated (>= 0.9); a step with no such window (its
sessions never all flowed at once, or they ended inside it: a tester too slow to start them all in time)
fails, and says which side saturated from its first session flowing until the last (``before_the_window``). Memory
per session is the tester's PSS in the window minus its idle PSS before the sessions started, over N.

A step is sustained when, in one of two tries, the tester received >= 99 % of the frames the gateway sent
its viewers, the median session's output fps is >= 29.5, and (for the probe) the median session's latency is within 5 ms of the
gateway's truth (its 250 ms ingest buffer also hides a tester's stalls up to about that long, which a real
gateway's shorter buffer would pass on: see ``gateway_config``). Each step's JSON says how many tries it
took. The naive client is an aiortc ``VideoStreamTrack`` that encodes live and decodes every
received frame; Chromium's pairs publish a canvas and play the output in a <video> (frames counted by the
viewer's getStats against the gateway's frames sent to that viewer); neither has a latency method.
Sessions last ``--duration`` (20 s, the shortest of the shipped scenarios): the window then holds each probe
session's one-time latency calibration (about 2 s of decoding every frame) as a real session of that length
would; at 10 s it weighed twice as much.

    python bench/sessions_per_core.py [--duration 20] [--max 200] [--codecs h264,vp8]
                                      [--testers probe,naive,chromium] [--probe-share 0.35] [--quick]

Prints a line per step and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.server
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DELIVERED_MIN = 0.99
FPS_MIN = 29.5
LATENCY_ERROR_MAX_MS = 5.0
SATURATED = 0.9                 # a side using this fraction of what it has is saturated
SIZE, FPS = 512, 30.0
INGEST_BUFFER_MS = 250.0        # the gateway's ingest buffer (see gateway_config)
DELAY_MS, DELAY_PHASES = 50.0, 17  # the GPUs' processing delays: from 50 ms, in 17 steps over a frame period
GPU_SLOTS = 16                  # each GPU's: 17 x 16 = 272, over the gateway's 256 streams
TESTERS = ("probe", "naive", "chromium")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 10_000          # short quota periods: a throttled tester stalls <= 10 ms, not 100 ms
STEADY_POLL_S = 0.25            # how often the driver asks the gateway whether every session flows
STEADY_TIMEOUT_S = 60.0         # ... and for how long at most
WINDOW_MARGIN_S = 3.0           # the steady window ends this long before the first session can end
WINDOW_MIN_S = 2.0
STATUS_EVERY_S = 5.0            # between a probe session's status reads (the probe's default is 2 s)
CHROMIUM = os.environ.get("FLEET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FLEET_CHROMEDRIVER", "/usr/bin/chromedriver")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def gateway_config():
    from fleet.gateway.config import Delay, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec

    # A tester's sessions meet GPUs whose processing takes different times, so their outputs come back at phases
    # of their own whatever the phases their inputs left at: DELAY_PHASES GPUs whose fixed delays step by a
    # fraction of a frame period across one period (the gateway hands each new stream to the GPU with the most
    # free slots, so they share the sessions evenly). 17, a prime: no step falls in with the probe's shared send
    # instants (ProbeOptions.send_phases, any count but a multiple of 17), which with 16 would bring 4 instants'
    # outputs back at only 16. Two sessions on one GPU that share an instant still come back together.
    step_ms = 1000.0 / FPS / DELAY_PHASES
    profiles = {f"p{k}": GpuProfile(name="Bench GPU", fps_cap=60, cold_start_s=0, warmup_frames=0, prompt_cost=0,
                                    delay=Delay(dist="fixed", mean_ms=DELAY_MS + k * step_ms, jitter_ms=0.0))
                for k in range(DELAY_PHASES)}
    gpus = tuple(Gpu(id=f"G{k}", profile=f"p{k}", slots={"streamdiffusion": GPU_SLOTS}) for k in range(DELAY_PHASES))
    # Frames reach the runner model on their media clock INGEST_BUFFER_MS after they were due: a tester's stall
    # shorter than that (a full garbage collection of a loaded probe: up to ~100 ms) does not reach it. With the
    # default 20 ms, a stall's burst finds the runner busy and a frame is dropped; in relay mode the stream then
    # waits for its next keyframe (up to a GOP), which a real gateway, re-encoding its output, never does.
    return GatewayConfig(profiles=profiles, relay=True, max_streams=256, port=0, video_codecs=("H264", "VP8"),
                         ingest_buffer_ms=INGEST_BUFFER_MS,
                         orchestrators=(OrchestratorSpec(address="0xbench", uri="https://bench:8935", gpus=gpus),))


# --- /proc: CPU and memory of a process tree --------------------------------------------------

def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (chromedriver's browser processes are its grandchildren)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def end_tree(proc: subprocess.Popen) -> None:
    """A worker still running, and everything it started (chromedriver's browsers are its grandchildren): asked
    to stop (SIGTERM: it unwinds and quits its browsers), then, 10 s on, whatever is left is killed."""
    if proc.poll() is not None:
        return
    tree = process_tree(proc.pid)
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of every thread of each of these processes (and of its reaped children)."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended
        seconds[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return seconds


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings; a process born in between counts whole (a browser starts renderers)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def pss_mb(pids: list[int]) -> float:
    """Proportional set size (shared pages split among their users), summed: a browser's processes share much."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total / 1024


# --- the tester's share of its core -----------------------------------------------------------

@contextlib.contextmanager
def cpu_share(share: float) -> Iterator[Path | None]:
    """A cgroup (v1 cpu controller) whose tasks get ``share`` of one core; None when ``share`` is 1. Removed
    on every exit path (its tasks, if any are left, moved back to the root group first)."""
    if share >= 1.0:
        yield None
        return
    group = CGROUP_V1_CPU / f"fleet-bench-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(round(share * CFS_PERIOD_US)))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CGROUP_V1_CPU / "cgroup.procs").write_text(pid)
        group.rmdir()


# --- the workers: N sessions in this process --------------------------------------------------

async def probe_sessions(url: str, n: int, duration: float, stagger: float, codec: str, idle: list[float]) -> list[dict]:
    from fleet.media import synthetic_clip
    from fleet.probe.looplag import quiet_gc
    from fleet.probe.session import ProbeOptions, ProbeSpec, PromptChange, new_http_client, run_probe

    clip = synthetic_clip(SIZE, SIZE, FPS, codec=codec)
    client = new_http_client()
    quiet_gc()  # as the fleet's runner does once its clip is built
    idle.append(pss_mb(process_tree(os.getpid())))

    async def one(i: int) -> dict:
        await asyncio.sleep(stagger * i / n)
        spec = ProbeSpec(url, "livepeer", "streamdiffusion", clip, (PromptChange(0, {"prompt": "bench"}),),
                         duration_s=duration, options=ProbeOptions(status_every_s=STATUS_EVERY_S))
        r = await run_probe(spec, client=client)
        return {"stream": r.stream_id, "outcome": r.outcome, "error": r.error_class, "fps": r.output_fps,
                "received": r.frames_received, "latency_ms": r.g2g_latency_ms}

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def naive_sessions(url: str, n: int, duration: float, stagger: float, codec: str, idle: list[float]) -> list[dict]:
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

    idle.append(pss_mb(process_tree(os.getpid())))

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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def chromium_sessions(url: str, n: int, duration: float, codec: str, idle: list[float]) -> list[dict]:
    """N publisher+viewer pairs in one headless Chromium page (bench/chromium_pairs.html), served from loopback.
    chromedriver and the browser are this process's children: they inherit its core and its cgroup."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    handler = functools.partial(_QuietHandler, directory=str(Path(__file__).resolve().parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_script_timeout(duration + 30 + 10 * n)
            driver.get(f"http://127.0.0.1:{server.server_port}/chromium_pairs.html")
            idle.append(pss_mb(process_tree(os.getpid())))
            names = [f"chromium_{os.getpid()}_{i}" for i in range(n)]
            pairs = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "window.pairs(arguments[0]).then(done, (e) => done([{error: String(e)}]));",
                {"base": url, "names": names, "codec": codec, "size": SIZE, "fps": FPS, "seconds": duration})
        finally:
            driver.quit()
    finally:
        server.shutdown()
        server.server_close()
    return [{"stream": p.get("stream"), "outcome": "failed" if p.get("error") else "ok", "error": p.get("error"),
             "fps": p.get("fps") or 0.0, "received": p.get("decoded") or 0, "latency_ms": None,
             "dropped": p.get("dropped"), "drawn": p.get("drawn"), "encoded": p.get("encoded"),
             "limited_by": p.get("limited_by"), "sent_width": p.get("sent_width")} for p in pairs]


def worker(args: argparse.Namespace) -> None:
    if args.cgroup:  # before anything starts: every thread and child inherits the share
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    os.sched_setaffinity(0, {args.cpu})
    from fleet.webrtc import use_host_addresses

    use_host_addresses(["127.0.0.1"])
    idle: list[float] = []
    if args.mode == "chromium":
        sessions = chromium_sessions(args.url, args.n, args.duration, args.codec, idle)
    else:
        run = probe_sessions if args.mode == "probe" else naive_sessions
        if args.loop == "uvloop":
            import uvloop
            uvloop.install()
        sessions = asyncio.run(run(args.url, args.n, args.duration, args.stagger, args.codec, idle))
    print(json.dumps({"sessions": sessions, "idle_pss_mb": idle[0] if idle else None}))


# --- the driver -------------------------------------------------------------------------------

def flowing(c, url: str, known: set[str]) -> tuple[int, int]:
    """Of the streams this step opened (not in ``known``): how many are open, and how many of those have a
    viewer the gateway has sent frames to."""
    streams = [s for s in c.get(f"{url}/debug/streams").json()["streams"] if s["name"] not in known]
    open_ = [s for s in streams if s["open"]]
    return len(open_), sum(1 for s in open_ if any(v["frames_sent"] > 0 for v in s["viewers"]))


def steady_window(c, url: str, known: set[str], n: int, window_s: float, proc: subprocess.Popen,
                  gateway_pid: int, samples: list | None = None) -> dict | None:
    """Both sides' CPU and the tester's PSS over the window in which all ``n`` sessions flow; None when they
    never all flowed, or the worker ended inside the window (its sessions ended before it closed). Until the
    window opens, each poll's (time, the tester's CPU, the gateway's, sessions flowing) goes to ``samples``."""
    deadline = time.monotonic() + STEADY_TIMEOUT_S
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        count = flowing(c, url, known)[1]
        if samples is not None:
            samples.append((time.monotonic(), cpu_seconds(process_tree(proc.pid)), cpu_seconds([gateway_pid]), count))
        if count >= n:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STEADY_POLL_S)  # a poll interval that ends early if the worker does
    tree = process_tree(proc.pid)
    t0, tester0, gateway0 = time.monotonic(), cpu_seconds(tree), cpu_seconds([gateway_pid])
    pss = pss_mb(tree)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(window_s)  # the window's length; it ends early if the worker does
    if proc.poll() is not None:
        return None  # the worker ended inside the window: its CPU cannot be read at the end (no /proc entry)
    tester1, gateway1, t1 = cpu_seconds(process_tree(proc.pid)), cpu_seconds([gateway_pid]), time.monotonic()
    still = flowing(c, url, known)[1]
    return {"window_s": t1 - t0, "tester_cpu_s": cpu_spent(tester0, tester1), "gateway_cpu_s": cpu_spent(gateway0, gateway1),
            "pss_mb": pss, "all_flowing_at_end": still >= n}


def run_loads(samples: list, share: float) -> dict | None:
    """Both sides' load over a step's polls before its window, from the first with a session flowing (the
    worker's own start, its imports and the clip's encoding, left out), for a step that has none: which side
    held its sessions back."""
    samples = [x for x in samples if x[3] > 0]
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    (t0, tester0, gateway0, _), (t1, tester1, gateway1, _) = samples[0], samples[-1]
    return {"span_s": round(t1 - t0, 2), "most_flowing": max(s[3] for s in samples),
            "tester_load": round(cpu_spent(tester0, tester1) / (t1 - t0) / share, 3),
            "gateway_load": round(cpu_spent(gateway0, gateway1) / (t1 - t0), 3)}


def saturated(tester_load: float, gateway_load: float) -> str:
    return "+".join(name for name, load in (("tester", tester_load), ("gateway", gateway_load)) if load >= SATURATED) \
        or "neither"


def step(mode: str, codec: str, n: int, duration: float, cpu: int, share: float, group: Path | None,
         gateway_cpu: int, loop: str = "uvloop") -> dict:
    """One step against a fresh gateway: a gateway that kept every earlier step's streams (their per-frame
    truth) would pause longer in its garbage collections at every step, and its pauses would be the tester's."""
    from fleet.gateway.process import GatewayProcess

    with GatewayProcess(config=gateway_config()) as gw:
        assert gw.proc is not None and gw.url is not None
        os.sched_setaffinity(gw.proc.pid, {gateway_cpu})
        return _step(gw.url, mode, codec, n, duration, cpu, share, group, gw.proc.pid, loop)


def _step(url: str, mode: str, codec: str, n: int, duration: float, cpu: int, share: float, group: Path | None,
          gateway_pid: int, loop: str = "uvloop") -> dict:
    import httpx

    stagger = 0.0 if mode == "chromium" else min(4.0, n * 0.05)
    window_s = max(WINDOW_MIN_S, duration - stagger - WINDOW_MARGIN_S)
    with httpx.Client(timeout=30) as c:
        known = {s["name"] for s in c.get(f"{url}/debug/streams").json()["streams"]}
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--mode", mode, "--codec", codec, "--url", url,
                                 "--n", str(n), "--duration", str(duration), "--cpu", str(cpu), "--stagger", str(stagger),
                                 "--cgroup", str(group or ""), "--loop", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples: list = []
        try:
            window = steady_window(c, url, known, n, window_s, proc, gateway_pid, samples)
            out, err = proc.communicate(timeout=duration * 4 + 120 + 10 * n * (mode == "chromium"))
        finally:
            end_tree(proc)
        if proc.returncode != 0:
            return {"n": n, "ok": False, "saturated": "neither", "error": err.strip().splitlines()[-1:] or ["worker failed"]}
        data = json.loads(out.strip().splitlines()[-1])
        sent = received = 0
        errors = []
        streams = {s["name"]: s for s in c.get(f"{url}/debug/streams").json()["streams"] if s["name"] not in known}
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
    ok = (delivered >= DELIVERED_MIN and median(fps) >= FPS_MIN and window is not None
          and all(s["outcome"] in ("ok", "degraded") for s in data["sessions"])
          and (mode != "probe" or (err50 is not None and err50 <= LATENCY_ERROR_MAX_MS)))
    r = {"n": n, "ok": ok, "delivered": round(delivered, 4), "fps_p50": round(median(fps), 2),
         "fps_p10": round(fps[len(fps) // 10], 2), "latency_error_ms_p50": err50 and round(err50, 3),
         "outcomes": sorted({s["outcome"] for s in data["sessions"]})}
    if window is None:  # which side held the sessions back: the loads from the first session flowing
        run = run_loads(samples, share)
        if run is None:
            return {**r, "ok": False, "saturated": "neither", "before_the_window": None,
                    "window": "the sessions never all flowed at once (too few polls with one flowing to say which side)"}
        why = (f"every session flowed only {run['span_s']} s after the first did: the sessions ended inside the window"
               if run["most_flowing"] >= n else "the sessions never all flowed at once")
        return {**r, "ok": False, "saturated": saturated(run["tester_load"], run["gateway_load"]), "window": why,
                "before_the_window": run}
    tester_load = window["tester_cpu_s"] / window["window_s"] / share   # of what it has: its share of its core
    gateway_load = window["gateway_cpu_s"] / window["window_s"]         # of its core
    idle = data.get("idle_pss_mb")
    return {**r, "tester_load": round(tester_load, 3), "gateway_load": round(gateway_load, 3),
            "saturated": saturated(tester_load, gateway_load), "share": share,
            "cpu_ms_per_session_s": round(1000 * window["tester_cpu_s"] / window["window_s"] / n, 2),
            "gateway_cpu_ms_per_session_s": round(1000 * window["gateway_cpu_s"] / window["window_s"] / n, 2),
            "mb_per_session": round((window["pss_mb"] - idle) / n, 2) if idle is not None else None,
            "window_s": round(window["window_s"], 2), "window_all_flowing": window["all_flowing_at_end"]}


def ramp(mode: str, codec: str, start: int, grow: int, limit: int, duration: float, cpu: int,
         share: float, gateway_cpu: int, loop: str = "uvloop") -> tuple[int, dict | None, dict | None]:
    """The most sessions sustained, its step, and the first failed step (which side saturated there)."""
    best, best_step, n, bad, bad_step = 0, None, start, None, None
    with cpu_share(share) as group:
        def run(k: int) -> dict:
            """A step; one that fails is tried once more (one noisy step, say a browser's slow start at n=1, would
            end the ramp): it fails when both tries do."""
            for tries in (1, 2):
                r = {**step(mode, codec, k, duration, cpu, share, group, gateway_cpu, loop), "tries": tries}
                print(f"{codec:4} {mode:8} n={k:4}  saturated={r['saturated']:14} {json.dumps(r)}", flush=True)
                if r["ok"]:
                    break
            return r

        while n <= limit:
            r = run(n)
            if not r["ok"]:
                bad, bad_step = n, r
                break
            best, best_step = n, r
            n += grow
        if bad is not None and bad - best > max(1, grow // 4):  # refine between the last good and the first bad
            lo, hi = best, bad
            while hi - lo > max(1, grow // 4):
                mid = (lo + hi) // 2
                r = run(mid)
                if r["ok"]:
                    lo, best, best_step = mid, mid, r
                else:
                    hi, bad_step = mid, r
    return best, best_step, bad_step


RAMPS = {  # tester: (first step, growth, growth with --quick)
    "probe": (10, 10, 20), "naive": (2, 2, 4), "chromium": (1, 1, 1)}


def figures_of(n: int, good: dict | None, bad: dict | None, share: float) -> dict:
    return {"sessions_sustained": n, "share_of_core": share, "sessions_per_core": round(n / share, 1),
            "cpu_ms_per_session_s": good and good.get("cpu_ms_per_session_s"),
            "mb_per_session": good and good.get("mb_per_session"),
            "gateway_cpu_ms_per_session_s": good and good.get("gateway_cpu_ms_per_session_s"),
            "saturated_at_limit": bad["saturated"] if bad else "none (the ramp hit --max)",
            "loads_at_limit": bad and {"tester": bad.get("tester_load"), "gateway": bad.get("gateway_load")},
            "latency_error_ms_p50": good and good.get("latency_error_ms_p50")}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=TESTERS, default="probe", help=argparse.SUPPRESS)
    ap.add_argument("--codec", choices=("h264", "vp8"), default="h264", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stagger", type=float, default=2.0, help=argparse.SUPPRESS)
    ap.add_argument("--cgroup", default="", help=argparse.SUPPRESS)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="the event loop of the probe's and the naive client's workers: uvloop (what Ray runs the "
                         "fleet's runner on, an async actor) or asyncio's own")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds per session at each step (20: the shortest session the shipped scenarios run; a "
                         "probe's one-time costs, its latency calibration's decoding, weigh more in shorter ones)")
    ap.add_argument("--max", type=int, default=200, help="most sessions tried")
    ap.add_argument("--codecs", default="h264,vp8", help="codecs to ramp, comma-separated (h264, vp8)")
    ap.add_argument("--testers", default=",".join(TESTERS), help="testers to ramp, comma-separated")
    ap.add_argument("--probe-share", type=float, default=0.35,
                    help="the probe's share of its core (a cgroup CPU quota; 1: none), so that its side saturates "
                         "before the gateway's; throttling raises its cost per session a little (measured at 0.5: "
                         "27 ms against 22 ms), so the figure is conservative")
    ap.add_argument("--quick", action="store_true", help="coarser steps (a faster, rougher answer)")
    args = ap.parse_args()
    # a kill (SIGTERM) unwinds as an exception: the gateway and the worker (and what it started) are ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker:
        worker(args)
        return
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(set(codecs) - {"h264", "vp8"})
    if unknown or not codecs:
        ap.error(f"--codecs: {', '.join(unknown) or 'none given'}; allowed: h264, vp8")
    testers = [t.strip() for t in args.testers.split(",") if t.strip()]
    if set(testers) - set(TESTERS) or not testers:
        ap.error(f"--testers: allowed: {', '.join(TESTERS)}")
    if not 0 < args.probe_share <= 1:
        ap.error("--probe-share: a fraction of one core, in (0, 1]")
    if args.probe_share < 1 and "probe" in testers and not ((CGROUP_V1_CPU / "cpu.cfs_quota_us").exists()
                                                            and os.access(CGROUP_V1_CPU, os.W_OK)):
        ap.error(f"--probe-share {args.probe_share:g} needs cgroup v1's cpu controller at {CGROUP_V1_CPU}, writable (root); "
                 "--probe-share 1 runs the probe on its whole core")
    shares = {"probe": args.probe_share, "naive": 1.0, "chromium": 1.0}
    cpus = sorted(os.sched_getaffinity(0))
    tester_cpu, gateway_cpu = cpus[0], cpus[-1]
    figures: dict = {}
    for codec in codecs:
        figures[codec] = {}
        for tester in testers:
            start, grow, quick = RAMPS[tester]
            n, good, bad = ramp(tester, codec, start, quick if args.quick else grow, args.max, args.duration,
                                tester_cpu, shares[tester], gateway_cpu, args.loop)
            figures[codec][tester] = figures_of(n, good, bad, shares[tester])
        per = figures[codec]
        for other in ("naive", "chromium"):
            if "probe" in per and other in per:
                per[f"probe_vs_{other}"] = {
                    "sessions_per_core": ratio(per["probe"]["sessions_per_core"], per[other]["sessions_per_core"]),
                    "cpu_ms_per_session_s": ratio(per[other]["cpu_ms_per_session_s"], per["probe"]["cpu_ms_per_session_s"])}
    print(f"{'codec':5} {'tester':8} {'sessions/core':>13} {'CPU ms/session-s':>16} {'MB/session':>10}  saturated at the limit")
    for codec, per in figures.items():
        for tester in testers:
            f = per[tester]
            print(f"{codec:5} {tester:8} {f['sessions_per_core']:>13} {f['cpu_ms_per_session_s']!s:>16} "
                  f"{f['mb_per_session']!s:>10}  {f['saturated_at_limit']}")
        for other in ("naive", "chromium"):
            if f"probe_vs_{other}" in per:
                q = per[f"probe_vs_{other}"]
                print(f"{codec:5} probe vs {other}: {q['sessions_per_core']}x the sessions per core, "
                      f"{q['cpu_ms_per_session_s']}x less CPU per session-second")
    print(json.dumps({
        **figures, "gateway": "reference, relay mode, its own core",
        "ratios": "probe_vs_X: sessions per core = probe / X; cpu_ms_per_session_s = X / probe (times cheaper)",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
                   f"{platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
