"""Campaigns and monitors on a two-node Ray cluster: ``ray start --head`` on 127.0.0.2 (region east) and
``ray start --address`` on 127.0.0.3 (region west), driven with ``ray job submit`` or as a driver joining it
with ``--address``; and the Ray edge's exit codes as the README documents them: 4 for a runner killed, a
region no node offers (within ``placement.start_timeout_s``) and a slot broker lost mid-run, 130 for SIGINT.
After each, the gateway must list no open stream.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fleet.gateway.config import default_config
from fleet.gateway.process import GatewayProcess
from fleet.results.sink import read_sessions
from services import fleet_streams, free_port, gateway_args, last_json, open_streams, stop_ray_nodes, wait_for

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "campaigns" / "tiny.yaml"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # real Ray clusters, gateways and WebRTC: the full tier


@pytest.fixture(scope="module")
def gateway():
    with GatewayProcess(config=default_config(seed=11, status_interval_s=2.0)) as proc:
        yield proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-node Ray cluster on this machine, one region per node; stopped by PID at the end.

    Each node has its own temp dir, as separate machines would: sharing one, the second node unpacks a
    job's working_dir over the first's copy while the driver imports from it (ModuleNotFoundError)."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    tmp = tmp_path_factory.mktemp("ray")
    port, dash = free_port("127.0.0.2"), free_port("127.0.0.2")
    token = tmp / "auth_token"  # Ray 2.60 asks for token auth: every node and `ray job submit` share this one
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "FLEET_ICE_ADDRESSES": "127.0.0.1", "RAY_TMPDIR": str(tmp), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    ray = str(BIN / "ray")
    head = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.2", f"--port={port}",
                           "--dashboard-host=127.0.0.2", f"--dashboard-port={dash}", "--num-cpus=1",
                           "--resources", json.dumps({"region:east": 1000}), f"--temp-dir={tmp}"],
                          env=env, capture_output=True, text=True, timeout=120)
    west_tmp = tmp_path_factory.mktemp("raywest")
    try:
        assert head.returncode == 0, head.stderr[-2000:]
        worker = subprocess.run([ray, "start", f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3",
                                 "--num-cpus=1", "--resources", json.dumps({"region:west": 1000}),
                                 f"--temp-dir={west_tmp}"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield {"address": f"127.0.0.2:{port}", "dashboard": f"http://127.0.0.2:{dash}", "env": env}
    finally:
        stop_ray_nodes(tmp, west_tmp)


def test_job_submitted_to_a_two_node_cluster_runs_in_both_regions(cluster, gateway, tmp_path):
    scenario = tmp_path / "two-regions.yaml"
    scenario.write_text(f"extends: {TINY}\nname: two-regions\n"
                        "placement: {regions: [{name: east}, {name: west}]}\n"
                        "load: {shape: stages, stages: [{concurrency: 4, duration_s: 4}], "
                        "session: {duration: 4, max_s: 10, min_s: 2}}\n")
    out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"],
                          "--working-dir", str(REPO), "--", sys.executable, "-m", "fleet", "run", str(scenario),
                          *gateway_args(gateway), "--out", str(tmp_path / "results"), "--no-progress", "--json"],
                         env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = last_json(out.stdout)
    rows = read_sessions(summary["results"]).to_pylist()
    assert {r["region"] for r in rows} == {"east", "west"}
    assert {r["tester_host"] for r in rows} == {os.uname().nodename}  # the runners on both nodes, this machine
    assert all(r["outcome"] in ("ok", "degraded") for r in rows), [(r["outcome"], r["error_class"]) for r in rows]
    assert open_streams(gateway.url) == 0


def submit(cluster: dict, scenario: Path, out: Path, gateway: GatewayProcess, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], *extra,
                           "--working-dir", str(REPO), "--", sys.executable, "-m", "fleet", "run", str(scenario),
                           *gateway_args(gateway), "--out", str(out), "--no-progress", "--json"],
                          env=cluster["env"], capture_output=True, text=True, timeout=300)


def ray_cli(cluster: dict, *args: str) -> str:
    out = subprocess.run([str(BIN / "ray"), *args], env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def campaign_rows(out: Path) -> list[dict]:
    dirs = list(out.glob("campaign=*"))
    assert len(dirs) == 1, dirs
    return read_sessions(dirs[0]).to_pylist()


def test_a_runner_killed_mid_campaign_is_replaced_and_its_streams_stopped(cluster, tmp_path):
    """SIGKILL the region's runner while its sessions stream: they become tester failures, the driver
    stops their streams at the gateway (long before the gateway's own idle timeout), a new runner
    takes the later sessions."""
    scenario = tmp_path / "kill.yaml"
    scenario.write_text(f"extends: {TINY}\nname: kill\nplacement: {{regions: [{{name: west}}]}}\n"
                        "load: {shape: stages, stages: [{concurrency: 2, duration_s: 14}], "
                        "session: {duration: 6, max_s: 12, min_s: 2}}\n")
    with GatewayProcess(config=default_config(seed=7, status_interval_s=2.0)) as gw:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(run_on, cluster, scenario, tmp_path / "results", gw)
            wait_for("2 streams open", lambda: open_streams(gw.url) >= 2, 120)
            actors = json.loads(ray_cli(cluster, "list", "actors", "--address", cluster["dashboard"], "--format",
                                        "json", "--filter", "class_name=RegionRunner", "--filter", "state=ALIVE"))
            assert len(actors) == 1, actors
            os.kill(int(actors[0]["pid"]), 9)
            killed_at = time.time()
            out = job.result(timeout=300)
        rows = campaign_rows(tmp_path / "results")
        # go-livepeer has no stop call: the killed runner's peer connections fail ICE within the gateway's
        # 10 s and it closes their streams (long before its 60 s idle-input timeout)
        wait_for("the gateway to close the killed runner's streams", lambda: open_streams(gw.url) == 0, 30)
        reaped = [s for s in fleet_streams(gw.url) if s["started_unix"] < killed_at and s["closed_unix"] > killed_at]
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]  # README: 4, a tester failure
    assert "a new runner takes over" in out.stdout + out.stderr
    died = [r for r in rows if r["error_class"] == "runner_died"]
    assert died and all(r["error_phase"] == "tester" and r["outcome"] == "failed" for r in died)
    assert reaped and {s["closed_reason"] for s in reaped} <= {"ICE connection state failed", "ingest failed",
                                                               "ingest closed"}
    assert all(s["closed_unix"] - killed_at < 20 for s in reaped)
    after = [r for r in rows if r["outcome"] in ("ok", "degraded") and r["started_at"].timestamp() > killed_at]
    assert after, "no session ran on the replacement runner"


def test_a_job_stopped_mid_campaign_tears_down_and_keeps_its_results(cluster, tmp_path):
    scenario = tmp_path / "stop.yaml"
    scenario.write_text(f"extends: {TINY}\nname: stop\nplacement: {{regions: [{{name: east}}, {{name: west}}]}}\n"
                        "load: {shape: stages, stages: [{concurrency: 4, duration_s: 60}], "
                        "session: {duration: 30, max_s: 40, min_s: 2}}\n")
    job_id = f"fleet-stop-{secrets.token_hex(4)}"
    with GatewayProcess(config=default_config(seed=9, status_interval_s=2.0)) as gw:
        sub = submit(cluster, scenario, tmp_path / "results", gw, "--no-wait", "--submission-id", job_id,
                     "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "25"}}))
        assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
        wait_for("4 streams flowing", lambda: sum(1 for s in fleet_streams(gw.url)
                                                  if s["open"] and s["frames_out"] > 30) >= 4, 120)
        ray_cli(cluster, "job", "stop", "--address", cluster["dashboard"], job_id)
        status = ray_cli(cluster, "job", "status", "--address", cluster["dashboard"], job_id)
        assert "was stopped" in status, status
        assert open_streams(gw.url) == 0
        logs = ray_cli(cluster, "job", "logs", "--address", cluster["dashboard"], job_id)
    assert "SIGTERM: stopping every live session" in logs, logs[-5000:]
    rows = campaign_rows(tmp_path / "results")
    stopped = [r for r in rows if r["error_class"] == "stopped"]
    assert len(stopped) >= 4 and all(r["frames_received"] > 0 for r in stopped), rows


def test_a_monitor_runs_as_a_ray_job_and_ray_job_stop_ends_it_cleanly(cluster, tmp_path):
    """``ray job submit -- fleet monitor``: it probes from the cluster's regions; ``ray job stop`` stops its
    live session (torn down at the gateway) and the stopped session's row is stored."""
    scenario = tmp_path / "monitor.yaml"
    scenario.write_text(f"extends: {REPO / 'scenarios' / 'monitor.yaml'}\nname: jobmon\n"
                        "placement: {regions: [{name: east}, {name: west}]}\n"
                        "capacity: {stagger_s: 1}\nmonitor: {every_min: 0.5, daily_budget: 0.5, session_s: 30, flush_s: 5}\n"
                        "outputs: {kafka: null, prometheus: null}\n")
    job_id = f"fleet-monitor-{secrets.token_hex(4)}"
    with GatewayProcess(config=default_config(seed=11, status_interval_s=2.0)) as gw:
        sub = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--no-wait",
                              "--submission-id", job_id, "--runtime-env-json",
                              json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "25"}}),
                              "--working-dir", str(REPO), "--", sys.executable, "-m", "fleet", "monitor",
                              str(scenario), *gateway_args(gw), "--out", str(tmp_path / "results")],
                             env=cluster["env"], capture_output=True, text=True, timeout=300)
        assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
        try:
            wait_for("2 monitor streams flowing", lambda: sum(1 for s in fleet_streams(gw.url)
                                                              if s["open"] and s["frames_out"] > 30) >= 2, 120)
        except BaseException:
            print(ray_cli(cluster, "job", "logs", "--address", cluster["dashboard"], job_id)[-5000:])
            raise
        ray_cli(cluster, "job", "stop", "--address", cluster["dashboard"], job_id)
        status = ray_cli(cluster, "job", "status", "--address", cluster["dashboard"], job_id)
        assert "was stopped" in status, status
        assert open_streams(gw.url) == 0
        logs = ray_cli(cluster, "job", "logs", "--address", cluster["dashboard"], job_id)
    assert "SIGTERM: stopping every live session" in logs, logs[-5000:]
    rows = read_sessions(tmp_path / "results" / "campaign=monitor-jobmon").to_pylist()
    assert len(rows) >= 2 and {r["region"] for r in rows} == {"east", "west"}, rows
    assert len({r["target_orchestrator"] for r in rows}) == len(rows)  # a different orchestrator each
    assert all(r["frames_received"] > 0 for r in rows)


def run_on(cluster: dict, scenario: Path, out: Path, gateway: GatewayProcess, timeout_s: float = 300
           ) -> subprocess.CompletedProcess:
    """``fleet run`` as a driver joining the cluster (``--address``): its exit code is the test's to read."""
    return subprocess.run(run_args(cluster, scenario, out, gateway), env=cluster["env"], capture_output=True,
                          text=True, timeout=timeout_s, cwd=out.parent)


def run_args(cluster: dict, scenario: Path, out: Path, gateway: GatewayProcess) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [str(BIN / "fleet"), "run", str(scenario), "--address", cluster["address"], *gateway_args(gateway),
            "--out", str(out), "--no-progress", "--json"]


def short_run(tmp_path: Path, name: str, region: str, window_s: float, duration_s: float, max_s: float) -> Path:
    """A scenario of 2 concurrent sessions in one region, started at once."""
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(f"extends: {TINY}\nname: {name}\nplacement: {{regions: [{{name: {region}}}]}}\n"
                        f"load: {{shape: stages, stages: [{{concurrency: 2, duration_s: {window_s}}}], "
                        f"session: {{duration: {duration_s}, max_s: {max_s}, min_s: 2}}}}\ncapacity: {{stagger_s: 0}}\n"
                        "outputs: {report: false}\n")
    return scenario


@contextmanager
def campaign_on(cluster: dict, scenario: Path, out: Path, gateway: GatewayProcess) -> Iterator[subprocess.Popen]:
    """``fleet run`` joining the cluster, as a process the test acts on; killed if the test leaves it running."""
    proc = subprocess.Popen(run_args(cluster, scenario, out, gateway), env=cluster["env"], cwd=out.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("command", ["run", "monitor"])
def test_a_region_no_node_offers_fails_within_its_start_timeout_naming_it(cluster, gateway, tmp_path, command):
    """No node offers region:mars. With the default start timeout (120 s) the run would outlive the 90 s
    this test gives it; with 5 s it ends in time, with one line naming the region, its summary (no session
    ran) and exit 4: for a campaign and for a monitor alike."""
    scenario = tmp_path / "mars.yaml"
    scenario.write_text(f"extends: {TINY}\nname: mars\nplacement: {{regions: [{{name: mars}}], start_timeout_s: 5}}\n"
                        "load: {shape: stages, stages: [{concurrency: 1, duration_s: 4}], "
                        "session: {duration: 4, max_s: 10, min_s: 2}}\n"
                        "monitor: {every_min: 1, daily_budget: 0.5, session_s: 4}\noutputs: {report: false}\n")
    args = run_args(cluster, scenario, tmp_path / "results", gateway)
    if command == "monitor":
        args = [a for a in args if a != "--no-progress"] + ["--for", "60s"]
        args[1] = "monitor"
    out = subprocess.run(args, env=cluster["env"], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    named = [line for line in out.stderr.splitlines() if "'mars'" in line]
    assert len(named) == 1 and "within 5 s" in named[0] and "no node of the cluster offers it" in named[0], out.stderr
    assert "Traceback" not in out.stderr
    summary = last_json(out.stdout)
    assert "'mars'" in summary["tester_error"], summary
    assert summary["sessions"] == (0 if command == "run" else {}), summary
    assert "the tester failed" in out.stdout
    assert open_streams(gateway.url) == 0


def test_a_lost_broker_ends_the_campaign_with_exit_4_its_summary_and_the_rows_so_far(cluster, tmp_path):
    """SIGKILL the slot broker mid-campaign: the next lease finds it gone; the driver stops every live
    session, stores every row, prints its summary naming the cause and exits 4."""
    scenario = short_run(tmp_path, "nobroker", "east", window_s=40, duration_s=3, max_s=10)
    with GatewayProcess(config=default_config(seed=13, status_interval_s=2.0)) as gw:
        with campaign_on(cluster, scenario, tmp_path / "results", gw) as proc:
            wait_for("2 sessions over and 1 running", lambda: sum(1 for s in fleet_streams(gw.url) if not s["open"])
                     >= 2 and open_streams(gw.url) >= 1, 120)
            ended_before = sum(1 for s in fleet_streams(gw.url) if not s["open"])
            brokers = json.loads(ray_cli(cluster, "list", "actors", "--address", cluster["dashboard"], "--format",
                                         "json", "--filter", "class_name=BrokerActor", "--filter", "state=ALIVE"))
            assert len(brokers) == 1, brokers
            os.kill(int(brokers[0]["pid"]), signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=120)
        wait_for("every stream closed", lambda: open_streams(gw.url) == 0, 30)
    assert proc.returncode == 4, stdout[-2000:] + stderr[-2000:]
    assert "the slot broker" in stderr and "Traceback" not in stderr, stderr[-2000:]
    summary = last_json(stdout)
    assert "slot broker" in summary["tester_error"] and "ended early, the tester failed" in stdout
    rows = read_sessions(summary["results"]).to_pylist()
    assert summary["sessions"] == len(rows) >= ended_before, (summary["sessions"], len(rows), ended_before)


def test_sigint_stops_every_live_session_stores_them_and_exits_130(cluster, tmp_path):
    scenario = short_run(tmp_path, "sigint", "west", window_s=30, duration_s=30, max_s=40)
    with GatewayProcess(config=default_config(seed=17, status_interval_s=2.0)) as gw:
        with campaign_on(cluster, scenario, tmp_path / "results", gw) as proc:
            wait_for("2 streams flowing", lambda: sum(1 for s in fleet_streams(gw.url)
                                                      if s["open"] and s["frames_out"] > 30) >= 2, 120)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        assert open_streams(gw.url) == 0
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    rows = read_sessions(last_json(stdout)["results"]).to_pylist()
    stopped = [r for r in rows if r["error_class"] == "stopped"]
    assert len(stopped) == 2 and all(r["frames_received"] > 0 for r in stopped), rows
