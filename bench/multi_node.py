"""A campaign on three Ray nodes of this machine (each its own ``ray start``, two regions), a node lost mid-run.

The head on 127.0.0.2 offers region east; 127.0.0.3 and 127.0.0.4 both offer region west. Each step runs
one ``fleet run --address`` campaign of N concurrent short sessions against the reference gateway (relay
mode, 4 orchestrators); once all N streams flow and the first wave has ended, the node hosting the west runner is SIGKILLed with every
process of its ``ray start`` (a machine lost), and started again before the next step. Per step it prints,
from the gateway's record and the stored rows (counted here, not by the fleet):

- the sessions held: most fleet streams open at once at the gateway, and the median of 1 s samples;
- rows stored vs sessions the campaign planned, and duplicates (exactly once);
- the caps: most streams open at once (all, per orchestrator) vs the campaign's caps;
- the tester: rows marked ``tester_bottleneck``, their event-loop lag (mean, max);
- the gateway's CPU (share of one core over the step);
- the node kill: the lost node's sessions (``runner_died``), seconds to their rows, west sessions after it,
  the exit code (4 documented);
- the outcomes, and the reasons of those degraded;
- where the jitter came from, by the gateway's truth of each stream: the jitter coefficient of its frames as
  they reached the gateway's socket (what the tester's sender put in), of its output as the gateway sent it,
  and as the probe measured it; how many sessions each puts over the campaign's 0.1, and in how many the
  probe's verdict is the one the gateway's own sending gives.

Before each step's kill, the same campaign runs once without it, in the same cluster (its baseline): the kill's
step is also given as ratios of it (sessions ok or degraded, rows, sessions held, the runners' and the gateway's
CPU). ``--no-baseline`` leaves it out.

    python bench/multi_node.py [--steps 48,64] [--session 30] [--window 90] [--kill-after S] [--quick] [--no-baseline]

Every node it started is stopped by PID on every exit path. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
HEAD, WEST = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
ORCHS, SLOTS, FRACTION = 4, 32, 0.5          # 128 slots, 64 for the campaign; 16 per orchestrator
SAMPLE_S = 1.0
JITTER_LIMIT = 0.1   # the campaign's max_jitter_coeff (scenarios/base/streamdiffusion.yaml)
HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def node_procs(temp_dir: Path) -> dict[int, psutil.Process]:
    """Every process whose command line names ``temp_dir``, and its descendants (the node's workers)."""
    ours = re.compile(re.escape(str(temp_dir)) + r"(/|$|\s)")
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if ours.search(" ".join(p.info["cmdline"] or ())):
            procs[p.pid] = p
            try:
                procs.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
    procs.pop(os.getpid(), None)
    return procs


def signal_all(procs: dict[int, psutil.Process], sig: int) -> None:
    for p in procs.values():
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


class Cluster:
    """Three ``ray start`` nodes, each with its own temp dir; ended by PID (never ``ray stop``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs = {ip: root / f"ray{ip.rsplit('.', 1)[1]}" for ip in (HEAD, *WEST)}
        self.port, self.dash = free_port(HEAD), free_port(HEAD)
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, **HEALTH_CHECK, "FLEET_ICE_ADDRESSES": "127.0.0.1", "RAY_TMPDIR": str(self.dirs[HEAD]),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.address, self.dashboard = f"{HEAD}:{self.port}", f"http://{HEAD}:{self.dash}"

    def start(self, ip: str) -> None:
        region = "east" if ip == HEAD else "west"
        where = (["--head", f"--port={self.port}", f"--dashboard-host={HEAD}", f"--dashboard-port={self.dash}"]
                 if ip == HEAD else [f"--address={self.address}"])
        self.dirs[ip].mkdir(exist_ok=True)
        out = subprocess.run([str(BIN / "ray"), "start", *where, f"--node-ip-address={ip}", "--num-cpus=1",
                              "--resources", json.dumps({f"region:{region}": 1000}), f"--temp-dir={self.dirs[ip]}"],
                             env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"ray start on {ip} failed: {out.stderr[-1000:]}")

    def kill(self, ip: str) -> int:
        """SIGKILL a node: a machine lost, nothing says goodbye."""
        procs = node_procs(self.dirs[ip])
        signal_all(procs, signal.SIGKILL)
        psutil.wait_procs(list(procs.values()), timeout=10)
        return len(procs)

    def stop(self) -> None:
        procs: dict[int, psutil.Process] = {}
        for d in self.dirs.values():
            procs.update(node_procs(d))
        signal_all(procs, signal.SIGTERM)
        _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
        signal_all({p.pid: p for p in alive}, signal.SIGKILL)

    def actor_nodes(self, class_name: str) -> list[str]:
        def ray_list(*args: str) -> list[dict[str, Any]]:
            out = subprocess.run([str(BIN / "ray"), "list", *args, "--address", self.dashboard, "--format", "json",
                                  "--limit", "1000"], env=self.env, capture_output=True, text=True, timeout=120)
            found: list[dict[str, Any]] = json.loads(out.stdout)
            return found

        ips = {n["node_id"]: n["node_ip"] for n in ray_list("nodes")}
        return [ips[a["node_id"]] for a in ray_list("actors", "--detail", "--filter", f"class_name={class_name}",
                                                    "--filter", "state=ALIVE")]


def gateway_config() -> Any:
    from fleet.gateway.config import Delay, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec

    profile = GpuProfile(name="Bench GPU", fps_cap=60, cold_start_s=0, warmup_frames=0, prompt_cost=0,
                         delay=Delay(dist="fixed", mean_ms=50.0, jitter_ms=0.0))
    orchs = tuple(OrchestratorSpec(address=f"0x{i + 1:040x}", uri=f"https://orch-{i + 1}.bench.local:8935",
                                   gpus=(Gpu(id=f"G{i + 1}", profile="p", slots={"streamdiffusion": SLOTS}),))
                  for i in range(ORCHS))
    return GatewayConfig(profiles={"p": profile}, orchestrators=orchs, relay=True, port=0, max_streams=512,
                         status_interval_s=2.0, video_codecs=("H264", "VP8"), seed=25)


def scenario_text(n: int, session_s: float, window_s: float, per_orch: int) -> str:
    return f"""name: multinode{n}
extends: {ROOT / "tests/campaigns/tiny.yaml"}
target: {{dialect: reference, url: "http://127.0.0.1:1", capacity: {{source: gateway, refresh_s: 1}}}}
placement: {{regions: [{{name: east}}, {{name: west}}], start_timeout_s: 120}}
load:
  shape: stages
  stages: [{{concurrency: {n}, duration_s: {window_s:g}}}]
  session: {{duration: {session_s:g}, max_s: {session_s + 20:g}, min_s: 2}}
capacity: {{max_fraction: {FRACTION}, idle_reserve: 0, stagger_s: 0, max_per_orchestrator: {per_orch}, lease_wait_s: 20}}
outputs: {{report: false}}
"""


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def streams(url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{url}/debug/streams", timeout=10).json()["streams"]
    return [s for s in found if s["name"].startswith("fleet_")]


def wait(what: str, check: Any, timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)  # polling the gateway's record, with the deadline above
    raise TimeoutError(f"not within {timeout_s:g} s: {what}")


class Sampler:
    """Fleet streams open at the gateway, every ``SAMPLE_S``, on its own thread."""

    def __init__(self, url: str) -> None:
        self.url, self.samples, self._stop = url, [], threading.Event()
        self.samples: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.samples.append(sum(1 for s in streams(self.url) if s["open"]))
            except httpx.HTTPError:
                pass

    def close(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def step(cluster: Cluster, gw: Any, n: int, args: argparse.Namespace, work: Path, kill: bool = True) -> dict[str, Any]:
    """One campaign of ``n`` concurrent sessions; with ``kill``, the west runner's node SIGKILLed mid-run."""
    from fleet.results.sink import read_sessions

    per_orch = int(ORCHS * SLOTS * FRACTION) // ORCHS
    name = f"{n}{'' if kill else '-baseline'}"
    scenario = work / f"multinode{name}.yaml"
    scenario.write_text(scenario_text(n, args.session, args.window, per_orch))
    out_dir = work / f"results{name}"
    out_dir.mkdir()
    gw_proc = psutil.Process(gw.proc.pid)
    before = {s["name"] for s in streams(gw.url)}
    cpu0, t0 = gw_proc.cpu_times(), time.monotonic()
    proc = subprocess.Popen([str(BIN / "fleet"), "run", str(scenario), "--address", cluster.address, "--gateway-url",
                             gw.url, "--capacity-url", gw.cli_url, "--out", str(out_dir), "--no-progress", "--json"],
                            env=cluster.env, cwd=work, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = Sampler(gw.url)
    try:
        wait(f"{n} streams flowing", lambda: proc.poll() is not None or sum(
            1 for s in streams(gw.url) if s["open"] and s["frames_out"] > 20) >= n, 180)
        # the first wave ends before the kill: its rows measure the tester at steady load, undisturbed
        west: list[str] = []
        killed_at, killed = math.inf, 0
        if kill:
            flowing = time.monotonic()
            wait("the kill's moment", lambda: proc.poll() is not None or time.monotonic() - flowing >= args.kill_after,
                 args.kill_after + 5)
            west = [ip for ip in cluster.actor_nodes("RegionRunner") if ip != HEAD]
            broker = cluster.actor_nodes("BrokerActor")
            killed_at = time.time()
            killed = cluster.kill(west[0]) if west and west[0] not in broker else 0
        stdout, stderr = proc.communicate(timeout=args.window + args.session + 300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        samples = sampler.close()
    wait("every stream closed", lambda: not any(s["open"] for s in streams(gw.url)), 60)
    cpu1, t1 = gw_proc.cpu_times(), time.monotonic()
    mine = [s for s in streams(gw.url) if s["name"] not in before]
    summary = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    rows = read_sessions(summary["results"]).to_pylist()
    planned = json.loads((Path(summary["results"]) / "campaign.json").read_text())["planned_sessions"]
    ids = [r["session_id"] for r in rows]
    names = {r["stream_name"] for r in rows if r["stream_name"]}
    died = [r for r in rows if r["error_class"] == "runner_died"]
    jitter = jitter_sources(gw.url, mine, rows)
    orphans = [s for s in mine if s["name"] not in names]
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}   # why sessions were degraded or failed, as the rows say
    for r in rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        for why in r["reasons"] or ():
            reasons[why] = reasons.get(why, 0) + 1
    before_kill = [r for r in rows if r["started_at"].timestamp() + (r["duration_s"] or 0) < killed_at
                   and r["outcome"] in ("ok", "degraded")]
    lags = [r["tester_loop_lag_ms_mean"] for r in rows if r["tester_loop_lag_ms_mean"] is not None]
    lag_max = [r["tester_loop_lag_ms_max"] for r in rows if r["tester_loop_lag_ms_max"] is not None]
    per = [max_overlap([(s["started_unix"], s["closed_unix"]) for s in mine if s["orchestrator"] == o])
           for o in {s["orchestrator"] for s in mine}]
    steady = samples[len(samples) // 5: -max(1, len(samples) // 5)] or samples
    return {
        "n": n, "kill": kill, "exit_code": proc.returncode, "elapsed_s": round(t1 - t0, 1),
        "held_max": max_overlap([(s["started_unix"], s["closed_unix"]) for s in mine]),
        "held_median": statistics.median(steady) if steady else 0,
        "rows": len(rows), "planned": planned, "summary_sessions": summary["sessions"],
        "duplicate_rows": len(ids) - len(set(ids)), "streams_without_row": len(orphans) - min(len(orphans), len(died)),
        "outcomes": outcomes, "reasons": reasons, "jitter": jitter,
        "cap": int(ORCHS * SLOTS * FRACTION), "per_orchestrator_cap": per_orch, "per_orchestrator_max": max(per or [0]),
        "tester_bottleneck_rows": sum(1 for r in rows if r["tester_bottleneck"]),
        # the sessions that ended before the kill: the tester at steady load, not the kill's disturbance
        "before_kill": len(before_kill),
        "before_kill_bottleneck": sum(1 for r in before_kill if r["tester_bottleneck"]),
        "tester_cpu_pct_median": median_of(rows, "tester_cpu_pct"),
        "loop_busy_pct_median": median_of(rows, "tester_loop_busy_pct"),
        "loop_lag_ms_mean_median": round(statistics.median(lags), 2) if lags else None,
        "loop_lag_ms_max": round(max(lag_max), 1) if lag_max else None,
        "gateway_cpu_pct": round(100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0), 1),
        "killed_node": west[0] if killed else None, "killed_processes": killed,
        "runner_died": len(died), "orphan_streams": len(orphans),
        "died_rows_after_s": round(max(r["started_at"].timestamp() for r in died) - killed_at, 1) if died and kill else None,
        "west_ok_after_kill": sum(1 for r in rows if r["region"] == "west" and r["outcome"] in ("ok", "degraded")
                                  and r["started_at"].timestamp() > killed_at),
        "broker_leases_at_end": (summary.get("broker") or {}).get("leases"),
        "replaced": "a new runner takes over" in stderr,
    }


def jitter_sources(url: str, mine: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the measured jitter came from, by the gateway's truth of each session's stream: the jitter of the
    frames as they reached the gateway's socket (what the tester's sender put in, freezes out, as the probe's
    ``tester_send_jitter_coeff``), of the output as the gateway sent it to the probe (freezes out, as the
    probe's ``jitter_coeff``), and as the probe measured it; medians, and how many sessions exceed
    ``JITTER_LIMIT`` by each. The output's figure is the probe's own definition on the gateway's send times:
    this judges the probe's timestamps, not its formula (tests/test_probe.py works that out apart)."""
    from fleet.probe.timing import jitter

    by_name = {s["name"]: s for s in mine}
    measured = []
    unread = 0
    for r in rows:
        s = by_name.get(r["stream_name"] or "")
        if s is None or r["jitter_coeff"] is None:
            continue
        try:
            t = httpx.get(f"{url}/debug/streams/{s['id']}", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            unread += 1   # counted, and the step's other figures kept
            continue
        sent_in = jitter([f["t_in"] for f in t["frames"] if f["t_in"] is not None])[0]
        # the output by the probe's own definition (freezes out), on the gateway's send times
        sent_out = jitter([when for _, when in t["egress"][0]])[0] if t["egress"] and t["egress"][0] else None
        if sent_in is not None and sent_out is not None:
            measured.append((sent_in, sent_out, r["jitter_coeff"], r["tester_send_jitter_coeff"]))
    if not measured:
        return {}
    cols = list(zip(*measured))[:3]
    return {"sessions": len(measured), "truth_unread": unread, "limit": JITTER_LIMIT,
            **{f"{k}_p50": round(statistics.median(c), 3) for k, c in zip(("tester_sent", "gateway_sent", "probe"), cols)},
            **{f"{k}_over": sum(v > JITTER_LIMIT for v in c) for k, c in zip(("tester_sent", "gateway_sent", "probe"), cols)},
            # sessions the probe judged as the gateway's own sending would have them judged (over the limit or not)
            "probe_agrees": sum((p > JITTER_LIMIT) == (g > JITTER_LIMIT) for _, g, p, _ in measured),
            # the probe's own figure for its sending (tester_send_jitter_coeff) against the gateway's socket's
            "probe_send_p50": round(statistics.median(s for *_, s in measured if s is not None), 3)
            if any(s is not None for *_, s in measured) else None,
            "probe_send_error_max": max((abs(s - i) for i, _, _, s in measured if s is not None), default=None)}


def ok_rows(r: dict[str, Any]) -> int:
    return int(r["outcomes"].get("ok", 0) + r["outcomes"].get("degraded", 0))


def against(kill: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The kill's step as ratios of the same step run without it, in the same cluster and run."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None
    return {"ok_or_degraded": ratio(ok_rows(kill), ok_rows(base)), "rows": ratio(kill["rows"], base["rows"]),
            "held_median": ratio(kill["held_median"], base["held_median"]),
            "runner_cpu_pct_median": ratio(kill["tester_cpu_pct_median"], base["tester_cpu_pct_median"]),
            "gateway_cpu_pct": ratio(kill["gateway_cpu_pct"], base["gateway_cpu_pct"])}


def median_of(rows: list[dict[str, Any]], column: str) -> float | None:
    values = [r[column] for r in rows if r[column] is not None]
    return round(statistics.median(values), 1) if values else None


def line(r: dict[str, Any]) -> str:
    if not r["kill"]:
        return (f"n={r['n']} baseline (no kill): held max {r['held_max']} (median {r['held_median']}), rows {r['rows']}/"
                f"{r['planned']} planned (dup {r['duplicate_rows']}, streams without row {r['streams_without_row']}), "
                f"ok or degraded {ok_rows(r)}, bottleneck rows {r['tester_bottleneck_rows']}, runner CPU med "
                f"{r['tester_cpu_pct_median']} %, gateway CPU {r['gateway_cpu_pct']} %, exit {r['exit_code']}, "
                f"outcomes {r['outcomes']} (reasons {r['reasons']}), jitter {r['jitter']}, {r['elapsed_s']} s")
    return (f"n={r['n']}: held max {r['held_max']} (median {r['held_median']}), rows {r['rows']}/{r['planned']} planned "
            f"(dup {r['duplicate_rows']}, streams without row {r['streams_without_row']}), caps {r['held_max']}<={r['cap']} "
            f"per-orch {r['per_orchestrator_max']}<={r['per_orchestrator_cap']}, bottleneck rows "
            f"{r['tester_bottleneck_rows']} ({r['before_kill_bottleneck']}/{r['before_kill']} of those ended before the kill), "
            f"runner CPU med {r['tester_cpu_pct_median']} %, loop busy med {r['loop_busy_pct_median']} %, "
            f"loop lag mean med {r['loop_lag_ms_mean_median']} ms max {r['loop_lag_ms_max']} ms, "
            f"gateway CPU {r['gateway_cpu_pct']} %, kill {r['killed_node']}: {r['runner_died']} runner_died "
            f"(rows {r['died_rows_after_s']} s after), {r['west_ok_after_kill']} west ok after, "
            f"replaced {r['replaced']}, exit {r['exit_code']}, outcomes {r['outcomes']} (reasons {r['reasons']}), "
            f"jitter {r['jitter']}, {r['elapsed_s']} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="48,64", help="concurrent sessions per step, comma-separated")
    ap.add_argument("--session", type=float, default=30.0, help="each session's length, s")
    ap.add_argument("--window", type=float, default=90.0, help="each step's plan window, s")
    ap.add_argument("--kill-after", type=float, default=None,
                    help="seconds from all N streams flowing to the kill (default: a session's length + 5)")
    ap.add_argument("--quick", action="store_true", help="one step of 48, shorter sessions")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip each step's run without the kill (its figures are the kill's baseline)")
    args = ap.parse_args()
    # a kill (SIGTERM) unwinds as an exception: the gateway, workers and Ray nodes started here are ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    steps = [48] if args.quick else [int(x) for x in args.steps.split(",")]
    if args.quick:
        args.session, args.window = 10.0, 30.0
    if args.kill_after is None:
        args.kill_after = args.session + 5
    from fleet.gateway.process import GatewayProcess

    results = []
    with tempfile.TemporaryDirectory(prefix="fleet-multinode-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            for ip in (HEAD, *WEST):
                cluster.start(ip)
            with GatewayProcess(config=gateway_config()) as gw:
                for n in steps:
                    base = None
                    if not args.no_baseline:
                        base = step(cluster, gw, n, args, Path(tmp), kill=False)
                        print(line(base), flush=True)
                        results.append(base)
                    r = step(cluster, gw, n, args, Path(tmp))
                    print(line(r), flush=True)
                    if base is not None:
                        r["against_baseline"] = against(r, base)
                        print(f"n={n}: the kill against its baseline: {r['against_baseline']}", flush=True)
                    results.append(r)
                    if r["killed_node"]:
                        cluster.start(r["killed_node"])  # the machine back for the next step
        finally:
            cluster.stop()
    print(json.dumps({"bench": "multi_node", "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                      "python": platform.python_version(), "steps": results}), flush=True)


if __name__ == "__main__":
    main()
