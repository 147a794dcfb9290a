"""A campaign on three Ray nodes, each its own ``ray start`` process on this machine, in two regions:
the head on 127.0.0.2 (region east), two more on 127.0.0.3 and 127.0.0.4 (both region west). Mid-campaign
the whole node hosting the west runner is SIGKILLed (its raylet and every process that ``ray start``
began), as a machine lost. The gateway's own record of every stream and the stored Parquet rows are the
truth; the checks below read them with their own code (a sweep over start/close times), never the fleet's:

- the killed node's in-flight sessions are rows: failed, phase tester, ``runner_died``;
- every session the campaign started has exactly one row, and every stream at the gateway has its row;
- the caps held at the gateway (concurrent fleet streams, per orchestrator), the lost sessions' orphan
  streams included (the gateway drops them only when their ICE fails: the executor holds their leases
  until then); the leases came back (west ran again after the kill, no session was skipped, the broker
  ends with none), and the sessions on the surviving nodes finished ok or degraded;
- the slot broker is on the driver's node (the head), so losing a region's node is not losing the run.
- exit 4 (tester failures, as the README documents) and no stream left open at the gateway.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from fleet.gateway.config import Delay, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec
from fleet.gateway.process import GatewayProcess
from fleet.results.sink import read_sessions
from services import fleet_streams, free_port, gateway_args, last_json, open_streams, ray_node_procs, stop_ray_nodes, wait_for

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "campaigns" / "tiny.yaml"
BIN = Path(sys.executable).parent

CONCURRENCY = 12          # the plan's sessions at once
CAP = 16                  # the campaign's caps: 32 slots x max_fraction 0.5, and 4 per orchestrator (x 4 = 16);
PER_ORCHESTRATOR = 4      # a dead session's lease held past its death takes room the later sessions then lack
LEASE_WAIT_S = 20         # ... and they are skipped after this: longer than a dead session's lease is held
                          # (ORPHAN_HOLD_S, 15 s), shorter than an unreleased one lives (length + 30 s = 40 s)
# GCS declares a silent node dead after period x threshold (Ray's defaults: 3 s x 5, plus a 5 s delay):
# shortened so the lost node's sessions end within the campaign's window, not after it
HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}

pytestmark = pytest.mark.slow  # three real Ray nodes, a gateway and a dozen WebRTC sessions: the full tier


def gateway_config() -> GatewayConfig:
    """Four orchestrators with 8 slots each (32), relaying the media untouched: the gateway is not this
    machine's bottleneck at a dozen streams next to three Ray nodes."""
    profile = GpuProfile(name="Test GPU", fps_cap=60, cold_start_s=0, warmup_frames=0, prompt_cost=0,
                         delay=Delay(dist="fixed", mean_ms=50.0, jitter_ms=0.0))
    orchs = tuple(OrchestratorSpec(address=f"0x{i + 1:040x}", uri=f"https://orch-{i + 1}.reference.local:8935",
                                   gpus=(Gpu(id=f"G{i + 1}", profile="p", slots={"streamdiffusion": 8}),))
                  for i in range(4))
    return GatewayConfig(profiles={"p": profile}, orchestrators=orchs, relay=True, port=0, status_interval_s=2.0,
                         video_codecs=("H264", "VP8"), seed=25)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes, each its own ``ray start`` and temp dir (as separate machines); stopped by PID at the end."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    dirs = {ip: tmp_path_factory.mktemp(f"ray{ip.rsplit('.', 1)[1]}") for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
    head = dirs["127.0.0.2"]
    port, dash = free_port("127.0.0.2"), free_port("127.0.0.2")
    token = head / "auth_token"  # Ray 2.60's token auth: every node and every client share this one
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, **HEALTH_CHECK, "FLEET_ICE_ADDRESSES": "127.0.0.1", "RAY_TMPDIR": str(head),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    ray = str(BIN / "ray")
    try:
        for ip, tmp in dirs.items():
            region = "east" if tmp == head else "west"
            where = (["--head", f"--port={port}", "--dashboard-host=127.0.0.2", f"--dashboard-port={dash}"]
                     if tmp == head else [f"--address=127.0.0.2:{port}"])
            out = subprocess.run([ray, "start", *where, f"--node-ip-address={ip}", "--num-cpus=1", "--resources",
                                  json.dumps({f"region:{region}": 1000}), f"--temp-dir={tmp}"],
                                 env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
        yield {"address": f"127.0.0.2:{port}", "dashboard": f"http://127.0.0.2:{dash}", "env": env, "dirs": dirs}
    finally:
        stop_ray_nodes(*dirs.values())


def ray_json(cluster: dict, *args: str) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", *args, "--address", cluster["dashboard"], "--format", "json",
                          "--limit", "1000"], env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    found: list[dict] = json.loads(out.stdout)
    return found


def actor_nodes(cluster: dict, class_name: str) -> list[str]:
    """The IP of the node of each live actor of ``class_name``."""
    ips = {n["node_id"]: n["node_ip"] for n in ray_json(cluster, "nodes")}
    return [ips[a["node_id"]] for a in ray_json(cluster, "actors", "--detail", "--filter", f"class_name={class_name}",
                                                "--filter", "state=ALIVE")]


def kill_node(temp_dir: Path) -> int:
    """SIGKILL a node as a machine lost: every process whose command line names its temp dir (its raylet,
    agents, log monitor) and their descendants (the workers). No SIGTERM first: nothing may say goodbye."""
    procs = ray_node_procs(temp_dir)
    for p in procs.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs.values()), timeout=10)
    return len(procs)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Most spans open at once (a close at the same instant as a start comes first)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def table(rows: list[dict], killed_at: float) -> str:
    """The rows by start, times from the kill: what a failure message shows."""
    return "\n".join(f"{r['session_id'][-5:]} {r['region']} {r['started_at'].timestamp() - killed_at:+6.1f} "
                     f"{r['outcome']} {r['error_class']} {(r['error_detail'] or '')[:50]}"
                     for r in sorted(rows, key=lambda r: r["started_at"]))


def test_a_node_lost_mid_campaign_fails_its_sessions_returns_their_leases_and_the_rest_finish(cluster, tmp_path):
    scenario = tmp_path / "multinode.yaml"
    scenario.write_text(f"extends: {TINY}\nname: multinode\n"
                        "target: {dialect: reference, url: 'http://127.0.0.1:1', "
                        "capacity: {source: gateway, refresh_s: 1}}\n"
                        "placement: {regions: [{name: east}, {name: west}], start_timeout_s: 60}\n"
                        f"load: {{shape: stages, stages: [{{concurrency: {CONCURRENCY}, duration_s: 45}}], "
                        "session: {duration: 10, max_s: 20, min_s: 2}}\n"
                        f"capacity: {{max_fraction: 0.5, idle_reserve: 0, stagger_s: 0, "
                        f"max_per_orchestrator: {PER_ORCHESTRATOR}, lease_wait_s: {LEASE_WAIT_S}}}\n"
                        "outputs: {report: false}\n")
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    with GatewayProcess(config=gateway_config()) as gw, ThreadPoolExecutor(1) as pool:
        args = [str(BIN / "fleet"), "run", str(scenario), "--address", cluster["address"], *gateway_args(gw),
                "--out", str(out_dir), "--no-progress", "--json"]
        job = pool.submit(subprocess.run, args, env=cluster["env"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
        wait_for(f"{CONCURRENCY} streams flowing", lambda: job.done() or sum(
            1 for s in fleet_streams(gw.url) if s["open"] and s["frames_out"] > 20) >= CONCURRENCY, 120)
        assert not job.done(), job.result().stdout[-3000:] + job.result().stderr[-3000:]
        runners = actor_nodes(cluster, "RegionRunner")
        [west] = [ip for ip in runners if ip != "127.0.0.2"]   # east's runner is on the head, the one east node
        assert actor_nodes(cluster, "BrokerActor") == ["127.0.0.2"], "the broker must outlive the lost node"
        killed_at = time.time()
        assert kill_node(cluster["dirs"][west]) > 0
        out = job.result(timeout=300)
        wait_for("the gateway to close every stream", lambda: open_streams(gw.url) == 0, 30)
        streams = [s for s in fleet_streams(gw.url) if s["name"].startswith("fleet_")]
    assert out.returncode == 4, out.stdout[-3000:] + out.stderr[-3000:]  # README: 4, tester failures
    assert "a new runner takes over" in out.stderr, out.stderr[-3000:]
    summary = last_json(out.stdout)
    rows = read_sessions(summary["results"]).to_pylist()
    planned = json.loads((Path(summary["results"]) / "campaign.json").read_text())["planned_sessions"]

    # exactly once: one row per session the campaign planned and started, every stream has its row
    ids = [r["session_id"] for r in rows]
    assert len(ids) == len(set(ids)) == summary["sessions"] == planned, (len(ids), len(set(ids)), planned)
    by_name = {r["stream_name"]: r for r in rows if r["stream_name"]}
    orphans = [s for s in streams if s["name"] not in by_name]
    died = [r for r in rows if r["error_class"] == "runner_died"]
    # the lost node's: started before it (one may have ended just before, its row not yet returned)
    assert all(s["started_unix"] < killed_at for s in orphans), (
        [(s["name"], s["started_unix"] - killed_at, s["closed_unix"] - killed_at, s["closed_reason"]) for s in orphans],
        table(rows, killed_at))
    assert 1 <= len(orphans) <= len(died), (len(orphans), len(died))

    # the caps, as the gateway saw them (orphans included: they hold their slots until the gateway drops them)
    spans = [(s["started_unix"], s["closed_unix"]) for s in streams]
    assert max_overlap(spans) <= CAP, (max_overlap(spans), table(rows, killed_at))
    for orch in {s["orchestrator"] for s in streams}:
        mine = [(s["started_unix"], s["closed_unix"]) for s in streams if s["orchestrator"] == orch]
        assert max_overlap(mine) <= PER_ORCHESTRATOR, (orch, max_overlap(mine))

    # the lost node's sessions are the tester's failures, in its region only; the rest finished
    assert all(r["outcome"] == "failed" and r["error_phase"] == "tester" and r["region"] == "west" for r in died), died
    others = [r for r in rows if r["error_class"] != "runner_died"]
    assert all(r["outcome"] in ("ok", "degraded") for r in others), table(rows, killed_at)

    # the leases came back: west ran again on the surviving node, on slots the dead sessions held
    later_west = [r for r in others if r["region"] == "west" and r["started_at"].timestamp() > killed_at]
    assert later_west, "no west session ran after the node was lost"
    assert summary["broker"]["leases"] == 0, summary["broker"]
