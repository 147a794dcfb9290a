"""Campaigns on real Ray against a real reference gateway (a subprocess on loopback).

- a local run: ``fleet run`` starts a private Ray on 127.0.0.2;
- a two-node cluster: ``ray start --head`` on 127.0.0.2 (region east) and ``ray start --address``
  on 127.0.0.3 (region west), the campaign submitted with ``ray job submit``.
After each, the gateway must list no open stream.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from fleet.gateway.config import default_config
from fleet.gateway.server import GatewayProcess
from fleet.results.sink import SESSIONS, read_sessions

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "campaigns" / "tiny.yaml"
BIN = Path(sys.executable).parent


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway():
    with GatewayProcess(config=default_config(seed=11)) as proc:
        yield proc.url


def open_streams(url: str) -> int:
    return httpx.get(f"{url}/debug/streams", timeout=10).json()["open"]


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_local_campaign_writes_results_and_leaves_no_stream_open(gateway, tmp_path):
    out = subprocess.run([str(BIN / "fleet"), "run", str(TINY), "--gateway-url", gateway, "--out", str(tmp_path),
                          "--no-progress"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = last_json(out.stdout)
    assert summary["sessions"] == 2 and summary["outcomes"].get("failed", 0) == 0, summary
    table = read_sessions(summary["results"])
    assert table.schema.equals(SESSIONS, check_metadata=False)
    assert table.num_rows == 2
    rows = table.to_pylist()
    assert {r["region"] for r in rows} == {"local"}
    assert all(r["frames_received"] > 30 and r["e2e_latency_ms"] for r in rows)
    assert all(r["orchestrator_address"] and r["prompt_id"] for r in rows)
    assert pq.read_table(next(Path(summary["results"]).glob("date=*/events-*.parquet"))).num_rows > 0
    assert open_streams(gateway) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-node Ray cluster on this machine, one region per node; stopped by PID at the end."""
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
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = subprocess.run([ray, "start", f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3",
                                 "--num-cpus=1", "--resources", json.dumps({"region:west": 1000})],
                                env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield {"address": f"127.0.0.2:{port}", "dashboard": f"http://127.0.0.2:{dash}", "env": env}
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=60)


def test_job_submitted_to_a_two_node_cluster_runs_in_both_regions(cluster, gateway, tmp_path):
    scenario = tmp_path / "two-regions.yaml"
    scenario.write_text(f"extends: {TINY}\nname: two-regions\n"
                        "placement: {regions: [{name: east}, {name: west}]}\n"
                        "load: {shape: stages, stages: [{concurrency: 4, duration_s: 4}], "
                        "session: {duration: 4, max_s: 10, min_s: 2}}\n")
    out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"],
                          "--working-dir", str(REPO), "--", sys.executable, "-m", "fleet", "run", str(scenario),
                          "--gateway-url", gateway, "--out", str(tmp_path / "results"), "--no-progress"],
                         env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = last_json(out.stdout)
    rows = read_sessions(summary["results"]).to_pylist()
    assert {r["region"] for r in rows} == {"east", "west"}
    assert {r["tester_host"] for r in rows}  # ran on the cluster's nodes
    assert all(r["outcome"] in ("ok", "degraded") for r in rows), [(r["outcome"], r["error_class"]) for r in rows]
    assert open_streams(gateway) == 0
