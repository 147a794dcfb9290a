"""What the fleet on Ray costs over the bare probe: sessions per core, and time to the first session.

The same load (N concurrent 512x512 @ 30 fps VP8 sessions, one prompt, default probe options)
runs twice against the reference gateway (relay mode, its own core):

- bare: N ``run_probe`` sessions in one process;
- fleet: ``fleet run`` on a scenario of N concurrent sessions (a private Ray, one runner).

Each run is pinned to the other core with everything it starts (Ray's own processes
included). Once all N streams flow, the CPU of the run's whole process tree is measured
over a steady window; sessions per core = N / cores used. ``first_session_s`` is from
launching ``fleet run`` to the gateway seeing the campaign's first stream.

    python bench/fleet_overhead.py [--n 32] [--window 12]

Prints a line per run and, last, one JSON object with ``fleet_to_probe_ratio`` and ``first_session_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sessions_per_core import FPS, SIZE, gateway_config  # noqa: E402

TARGET = 0.9
POLL_S = 0.05


def scenario_text(n: int, duration: float) -> str:
    return f"""name: overhead
extends: {ROOT / "scenarios/base/streamdiffusion.yaml"}
target: {{dialect: reference, url: "http://127.0.0.1:1", capacity: {{source: static, slots: {n}}}}}
media: {{source: synthetic, width: {SIZE}, height: {SIZE}, fps: {FPS:g}}}
prompts: {{sets: [{{set: bootstrap}}]}}
load:
  shape: stages
  stages: [{{concurrency: {n}, duration_s: {duration:g}}}]
  session: {{duration: {duration:g}, max_s: {duration + 30:g}, min_s: 2}}
capacity: {{max_fraction: 1.0, idle_reserve: 0, stagger_s: 0, max_per_orchestrator: {n}}}
"""


# --- bare: N probes in this process ---------------------------------------------------------------

async def bare_sessions(url: str, n: int, duration: float) -> None:
    from fleet.media import synthetic_clip
    from fleet.probe.session import ProbeOptions, ProbeSpec, PromptChange, new_http_client, run_probe

    clip = synthetic_clip(SIZE, SIZE, FPS)
    client = new_http_client()

    async def one(i: int) -> None:
        await asyncio.sleep(2.0 * i / n)
        spec = ProbeSpec(url, "livepeer", "streamdiffusion", clip, (PromptChange(0, {"prompt": "bench"}),),
                         duration_s=duration, options=ProbeOptions())
        await run_probe(spec, client=client)

    await asyncio.gather(*(one(i) for i in range(n)))


def bare_worker(url: str, n: int, duration: float) -> None:
    from fleet.webrtc import use_host_addresses

    use_host_addresses(["127.0.0.1"])
    asyncio.run(bare_sessions(url, n, duration))


# --- measuring a process tree ---------------------------------------------------------------------

def tree_cpu(root: psutil.Process) -> dict[int, float]:
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def flowing(url: str, since: float) -> int:
    streams = httpx.get(f"{url}/debug/streams", timeout=10).json()["streams"]
    return sum(1 for s in streams if s["open"] and s["started_unix"] >= since and s["frames_out"] > 30)


def measure(cmd: list[str], url: str, n: int, window: float, cpu: int, deadline_s: float = 240) -> dict:
    since = time.time()
    t_launch = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        root = psutil.Process(proc.pid)
        first = None
        end = t_launch + deadline_s
        while time.monotonic() < end and proc.poll() is None:
            streams = httpx.get(f"{url}/debug/streams", timeout=10).json()["streams"]
            if first is None and any(s["started_unix"] >= since for s in streams):
                first = time.monotonic() - t_launch
            if flowing(url, since) >= n:
                break
            time.sleep(POLL_S)
        else:
            raise RuntimeError(f"{cmd[1]}: {n} streams never flowed: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")
        c1, t1 = tree_cpu(root), time.monotonic()
        time.sleep(window)  # the measurement window (not a synchronisation)
        c2, t2 = tree_cpu(root), time.monotonic()
        still = flowing(url, since)
        cpu_s = sum(v - c1.get(pid, 0.0) for pid, v in c2.items())
        cores = cpu_s / (t2 - t1)
        proc.wait(timeout=deadline_s)
        return {"sessions": n, "flowing_at_end": still, "cores": round(cores, 4),
                "sessions_per_core": round(n / cores, 1), "processes": len(c2),
                "first_session_s": round(first, 3) if first is not None else None, "exit": proc.returncode}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bare-worker", nargs=3, metavar=("URL", "N", "DURATION"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=32, help="concurrent sessions (default 32)")
    ap.add_argument("--window", type=float, default=12.0, help="seconds of steady state measured (default 12)")
    args = ap.parse_args()
    if args.bare_worker:
        bare_worker(args.bare_worker[0], int(args.bare_worker[1]), float(args.bare_worker[2]))
        return
    from fleet.gateway.process import GatewayProcess

    cpus = sorted(os.sched_getaffinity(0))
    run_cpu, gateway_cpu = cpus[0], cpus[-1]
    duration = args.window + 20
    with GatewayProcess(config=gateway_config()) as gw, tempfile.TemporaryDirectory() as tmp:
        os.sched_setaffinity(gw.proc.pid, {gateway_cpu})
        bare = measure([sys.executable, __file__, "--bare-worker", gw.url, str(args.n), str(duration)],
                       gw.url, args.n, args.window, run_cpu)
        print(f"bare   {json.dumps(bare)}", flush=True)
        scen = Path(tmp) / "overhead.yaml"
        scen.write_text(scenario_text(args.n, duration))
        fleet = measure([sys.executable, "-m", "fleet", "run", str(scen), "--gateway-url", gw.url, "--out",
                         str(Path(tmp) / "results"), "--no-progress"], gw.url, args.n, args.window, run_cpu)
        print(f"fleet  {json.dumps(fleet)}", flush=True)
    ratio = round(fleet["sessions_per_core"] / bare["sessions_per_core"], 3)
    print(json.dumps({
        "fleet_to_probe_ratio": ratio, "target": TARGET, "meets_target": ratio >= TARGET,
        "first_session_s": fleet["first_session_s"], "bare_first_session_s": bare["first_session_s"],
        "sessions": args.n, "bare_cores": bare["cores"], "fleet_cores": fleet["cores"],
        "fleet_processes": fleet["processes"], "media": f"{SIZE}x{SIZE}@{FPS:g} VP8",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
