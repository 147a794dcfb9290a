"""Does ``fleet monitor`` stay flat over time? A soak at a compressed cadence, RSS at start and end.

The monitor runs against the reference gateway (4 orchestrators) with its period, sessions and
flushes compressed (default: each orchestrator every 15 s, 5 s sessions, a Parquet batch every
10 s: about 16 sessions a minute, what a one-hour period over ~1000 orchestrators would start), for
``--minutes`` (at least 20 for the issue's check). Every ``--every`` seconds it samples the resident
memory of the monitor's driver process and of the region runner (Ray's ``ray::RegionRunner``
worker), and the sessions stored so far.

    python bench/monitor_soak.py [--minutes 20] [--every 60]

Prints a line per sample and, last, one JSON object: RSS at start (after the first minute, once
everything is imported and warm) and at the end, for both processes, their ratio, and sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.gateway.config import default_config  # noqa: E402
from fleet.gateway.process import GatewayProcess  # noqa: E402
from fleet.results.sink import read_sessions  # noqa: E402

MB = 1 << 20


def runner_rss() -> float | None:
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("RegionRunner" in part for part in p.info["cmdline"] or []):
                return p.memory_info().rss / MB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def stored(out: Path) -> int:
    d = out / "campaign=monitor-soak"
    try:
        return read_sessions(d).num_rows if d.exists() else 0
    except OSError:  # a batch being renamed into place
        return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-soak-"))
    scenario = tmp / "soak.yaml"
    scenario.write_text(f"extends: {ROOT / 'scenarios' / 'monitor.yaml'}\nname: soak\n"
                        "capacity: {max_fraction: 0.25, stagger_s: 1}\n"
                        "monitor: {every_min: 0.25, daily_budget: 1.0, session_s: 5, flush_s: 10}\n"
                        "outputs: {kafka: null, prometheus: null}\n")
    out = tmp / "results"
    samples = []
    with GatewayProcess(config=default_config(seed=3)) as gw:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "fleet"), "monitor", str(scenario), "--gateway-url",
                                 gw.url, "--out", str(out), "--for", f"{args.minutes}m"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        driver = psutil.Process(proc.pid)
        t0 = time.monotonic()
        try:
            for _ in range(int(args.minutes * 60 / args.every) + 2):
                if proc.poll() is not None:
                    break
                time.sleep(args.every)  # the sampling cadence (a benchmark, not synchronisation)
                if proc.poll() is not None:
                    break
                sample = {"t_s": round(time.monotonic() - t0), "driver_mb": round(driver.memory_info().rss / MB, 1),
                          "runner_mb": None if (r := runner_rss()) is None else round(r, 1), "sessions": stored(out)}
                samples.append(sample)
                print(f"t={sample['t_s']:5d} s  driver {sample['driver_mb']:7.1f} MB  runner "
                      f"{sample['runner_mb']} MB  sessions stored {sample['sessions']}", flush=True)
            log, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    if proc.returncode != 0 or len(samples) < 2:
        print(log[-3000:])
        return 1
    start, end = samples[0], samples[-1]
    result = {"machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.python_implementation()} "
                         f"{platform.python_version()}", "minutes": args.minutes,
              "sessions": stored(out), "driver_mb_start": start["driver_mb"], "driver_mb_end": end["driver_mb"],
              "driver_ratio": round(end["driver_mb"] / start["driver_mb"], 3),
              "runner_mb_start": start["runner_mb"], "runner_mb_end": end["runner_mb"],
              "runner_ratio": round(end["runner_mb"] / start["runner_mb"], 3)
              if start["runner_mb"] and end["runner_mb"] else None}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
