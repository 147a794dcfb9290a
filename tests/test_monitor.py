"""``fleet monitor`` for real: a private Ray, the reference gateway (4 orchestrators), a Kafka-protocol
broker (Tansu) and a scraping Prometheus. It covers every orchestrator within its period, paced; every
session reaches Kafka once and Prometheus shows the coverage; a restart rebuilt from the stored hourly
Parquet resumes without re-testing anyone early; SIGTERM stops a live session and leaves no stream open.
(The Ray-job path, ``ray job submit`` then ``ray job stop``, is in test_campaign.py with its cluster.)"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from services import (DEADLINE_S, Collector, Prometheus, Tansu, fleet_streams, gateway_args, last_json,
                      open_streams, wait_for)

from fleet.gateway.config import default_config
from fleet.gateway.process import GatewayProcess
from fleet.results.clickhouse import ClickHouseSink
from fleet.results.sink import read_sessions, read_table
from fleet.scenario import ClickHouseOut

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
FLEET = str(Path(sys.executable).parent / "fleet")
EVERY_S = 30.0          # the period: 4 orchestrators, so one start every 7.5 s
SESSION_S = 4.0
INTERVAL_S = EVERY_S / 4


def scenario(tmp: Path, prom_port: int, topic: str, database: str) -> Path:
    path = tmp / "monitor.yaml"
    path.write_text(f"extends: {REPO / 'scenarios' / 'monitor.yaml'}\nname: mon\n"
                    "capacity: {stagger_s: 1}\n"
                    f"monitor: {{every_min: {EVERY_S / 60}, session_s: {SESSION_S}, flush_s: 2}}\n"
                    f"outputs: {{kafka: {{topic: {topic}}}, prometheus: {{port: {prom_port}, linger_s: 3}}, "
                    f"clickhouse: {{url_env: FLEET_CLICKHOUSE_URL, database: {database}}}}}\n")
    return path


def monitor(path: Path, gw: GatewayProcess, out: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([FLEET, "monitor", str(path), *gateway_args(gw), "--out", str(out), "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out)


def finished(proc: subprocess.Popen, timeout: float = 180) -> tuple[str, dict]:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout + stderr, last_json(stdout)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    tansu = Tansu()
    tansu.start()
    with Prometheus(tmp) as prom, GatewayProcess(config=default_config(seed=5, status_interval_s=2.0)) as gw:
        yield {"tmp": tmp, "kafka": tansu, "prom": prom, "gw": gw}
    tansu.stop()


def test_the_monitor_covers_every_orchestrator_feeds_kafka_and_prometheus_and_resumes_after_a_restart(
        services, clickhouse):
    tmp, prom, gw = services["tmp"], services["prom"], services["gw"]
    topic = "fleet-monitor-test"
    database = f"fleet_m{secrets.token_hex(3)}"
    path = scenario(tmp, prom.target, topic, database)
    out = tmp / "results"
    out.mkdir()
    env = {**os.environ, **clickhouse.env, "FLEET_KAFKA_BOOTSTRAP": services["kafka"].bootstrap}
    collector = Collector(services["kafka"].bootstrap, topic)
    try:
        log, first = finished(monitor(path, gw, out, env, "--for", f"{EVERY_S + INTERVAL_S:g}s"))
        rows = read_sessions(out / "campaign=monitor-mon").to_pylist()
        # what Prometheus scraped as the monitor ended (after the endpoint closes its series go stale)
        at = dt.datetime.fromisoformat(first["updated_at"]).timestamp()
        targets = prom.query("fleet_coverage_targets", at)
        ages = prom.query("fleet_coverage_age_seconds", at)
        sessions = collector.wait_for(len(rows) * 2)  # each session's message among its samples and events
    finally:
        collector.close()
    keys = {f"https://orch-{i}.reference.local:8935" for i in range(1, 5)}
    ran = [r for r in rows if r["outcome"] != "skipped_no_capacity"]
    assert {r["target_orchestrator"] for r in ran} == keys, rows
    # the hourly partitions of one directory, files named by run
    assert all(p.parent.name.startswith("hour=") for p in (out / "campaign=monitor-mon").glob("date=*/*/sessions-*"))
    starts = sorted(r["started_at"].timestamp() for r in rows)
    assert all(b - a >= INTERVAL_S - 0.5 for a, b in zip(starts, starts[1:])), starts  # paced, never a burst
    by_key = {k: sorted(r["started_at"].timestamp() for r in ran if r["target_orchestrator"] == k) for k in keys}
    assert max(v[0] for v in by_key.values()) - starts[0] <= EVERY_S, by_key  # all four within the first period
    assert first["coverage"]["overdue"] == [] and first["coverage"]["used_s"] > 0
    # Kafka: every stored session exactly once, keyed by its session id
    session_msgs = [m for k, m, _, _ in sessions if m["type"] == "fleet_session"]
    assert sorted(m["data"]["session_id"] for m in session_msgs) == sorted(r["session_id"] for r in rows)
    assert first["kafka"]["delivered"] == first["kafka"]["produced"] and first["kafka"]["dropped"] == 0
    assert targets and float(targets[0]["value"][1]) == 4
    assert {a["metric"]["orchestrator"] for a in ages} == keys
    assert open_streams(gw.url) == 0

    # a restart: its state comes back from the stored Parquet, so nobody is tested again before its period
    log2, second = finished(monitor(path, gw, out, env, "--for", f"{INTERVAL_S * 2:g}s"))
    assert f"{len(rows)} stored session(s) read back" in log2, log2[-2000:]
    rows2 = [r for r in read_sessions(out / "campaign=monitor-mon").to_pylist() if r["run_id"] == second["run_id"]]
    last = {k: v[-1] for k, v in by_key.items()}
    for r in rows2:
        if r["outcome"] != "skipped_no_capacity":
            assert r["started_at"].timestamp() - last[r["target_orchestrator"]] >= EVERY_S - 0.5, (r, last)
    assert second["coverage"]["used_s"] >= first["coverage"]["used_s"]  # the day's budget is remembered
    # ClickHouse has both runs' batches, each once (a run's batch tokens never collide with another run's)
    stored = read_sessions(out / "campaign=monitor-mon").num_rows
    sink = ClickHouseSink(ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", database=database), clickhouse.env)
    try:
        in_ch = sink.query(f"SELECT count() AS n FROM {sink.table('sessions')}").column("n")[0].as_py()
        capacity_in_ch = sink.query(f"SELECT count() AS n FROM {sink.table('capacity')}").column("n")[0].as_py()
        sink.client.command(f"DROP DATABASE IF EXISTS {database}")
    finally:
        sink.close()
    assert in_ch == stored == len(rows) + len(rows2)
    # the capacity series: each run's first read at least, the reference network's 4 orchestrators in each
    # snapshot, with the run it belongs to; the same rows in ClickHouse
    series = read_table(out / "campaign=monitor-mon", "capacity").to_pylist()
    by_run: dict = {}
    for r in series:
        by_run.setdefault((r["run_id"], r["read_at"]), set()).add(r["orchestrator_uri"])
    assert {run for run, _ in by_run} == {first["run_id"], second["run_id"]}, by_run
    assert all(uris == keys for uris in by_run.values()) and capacity_in_ch == len(series)


def test_sigterm_stops_the_live_session_stores_it_and_leaves_no_stream_open(services):
    tmp, gw = services["tmp"], services["gw"]
    path = tmp / "stop.yaml"
    path.write_text(f"extends: {REPO / 'scenarios' / 'monitor.yaml'}\nname: stop\n"
                    "monitor: {every_min: 1, session_s: 30, flush_s: 60}\n"
                    "outputs: {kafka: null, prometheus: null}\n")
    out = tmp / "stop-results"
    out.mkdir()
    proc = monitor(path, gw, out, dict(os.environ))
    try:
        wait_for("a monitor stream flowing", lambda: any(s["open"] and s["frames_out"] > 30
                                                         for s in fleet_streams(gw.url)), DEADLINE_S * 3)
        proc.send_signal(signal.SIGTERM)
        log, summary = finished(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "SIGTERM: stopping every live session" in log
    assert summary["stopped_by"] == "SIGTERM" and summary["stop_s"] < 15
    wait_for("the gateway to list no open stream", lambda: open_streams(gw.url) == 0, 15)
    rows = read_sessions(out / "campaign=monitor-stop").to_pylist()
    assert len(rows) >= 1 and rows[-1]["frames_received"] > 0  # the stopped session's measurements were kept
