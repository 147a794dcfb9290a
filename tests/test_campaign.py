"""Campaigns on real Ray against a real reference gateway (a subprocess on loopback).

- a local run: ``fleet run`` starts a private Ray on 127.0.0.2;
- capacity shrinking mid-run: outside users take the network's idle slots while a local run goes on;
- an orchestrator that refuses while advertising idle slots.
Runs on a two-node cluster (``ray job submit``, a runner killed, ``ray job stop``, the exit codes of the
Ray edge) are in tests/test_cluster.py. After each, the gateway must list no open stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from fleet.gateway.config import default_config
from fleet.gateway.process import GatewayProcess
from fleet.results.sink import SCHEMA_VERSION, SESSIONS, read_sessions, read_table
from services import fleet_streams, gateway_args, last_json, open_streams, wait_for

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "campaigns" / "tiny.yaml"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # real Ray clusters, gateways and WebRTC: the full tier


@pytest.fixture(scope="module")
def gateway():
    # a runner's first status comes one status interval after its start (10 s in ai-runner; shorter sessions
    # aimed at no orchestrator cannot name theirs): 2 s here, for these short sessions
    with GatewayProcess(config=default_config(seed=11, status_interval_s=2.0)) as proc:
        yield proc


def test_local_campaign_writes_every_output_and_exits_with_the_breach_code(gateway, clickhouse, tmp_path):
    """A local run whose scenario has one impossible check: Parquet with the documented schema,
    rows in ClickHouse, JUnit XML, the HTML report, and exit code 3 (an SLA breach)."""
    scenario = tmp_path / "breach.yaml"
    scenario.write_text(f"extends: {TINY}\nname: breach\n"
                        "checks:\n"
                        "  - {metric: failed, aggregate: rate, op: '<=', threshold: 0.5}\n"
                        "  - {metric: g2g_latency_ms, aggregate: p50, op: '<=', threshold: 1, group_by: [region]}\n"
                        "outputs: {junit: junit.xml, clickhouse: {url_env: FLEET_CLICKHOUSE_URL, "
                        "user_env: FLEET_CLICKHOUSE_USER, password_env: FLEET_CLICKHOUSE_PASSWORD, "
                        "database: fleet_e2e}}\n")
    out = subprocess.run([str(BIN / "fleet"), "run", str(scenario), *gateway_args(gateway), "--out", str(tmp_path),
                          "--no-progress", "--json"], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env={**os.environ, **clickhouse.env})
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-2000:]
    summary = last_json(out.stdout)
    assert summary["sessions"] == 2 and summary["outcomes"].get("failed", 0) == 0, summary
    table = read_sessions(summary["results"])
    assert table.schema.equals(SESSIONS, check_metadata=False)
    assert table.num_rows == 2
    rows = table.to_pylist()
    # goodput: the share of the counted sessions that met every threshold, i.e. came out ok
    ok = sum(1 for r in rows if r["outcome"] == "ok")
    assert summary["verdict"] == {"passed": False, "breaches": 1, "goodput": round(ok / 2, 4), "sessions": 2,
                                  "counted": 2}
    assert {r["region"] for r in rows} == {"local"} and {r["schema_version"] for r in rows} == {SCHEMA_VERSION}
    assert all(r["frames_received"] > 30 and r["g2g_latency_ms"] for r in rows)
    # the tester's own sending, measured and stored (its value is judged in tests/test_probe.py)
    assert all(r["tester_send_jitter_coeff"] is not None and r["tester_send_jitter_coeff"] >= 0 for r in rows)
    assert all(r["orchestrator_address"] and r["orchestrator_url"] and r["prompt_id"] and r["gpu_name"] for r in rows)
    # no status names the GPU: it comes from the capacity snapshot, and with two GPUs per orchestrator
    # the one a stream ran on is ambiguous, so no id is guessed
    assert all(r["gpu_id"] is None for r in rows)
    assert all(r["request_id"] and r["stream_id"] and r["codec"] == "h264" and r["teardown_verified"] for r in rows)
    assert pq.read_table(next(Path(summary["results"]).glob("date=*/events-*.parquet"))).num_rows > 0
    assert open_streams(gateway.url) == 0
    junit = (tmp_path / "junit.xml").read_text()
    assert 'failures="1"' in junit and "p50(g2g_latency_ms) &lt;= 1 [region=local]" in junit
    report = Path(summary["report"]).read_text()
    # the failure taxonomy has a plot only when some session was not ok (healthy GPUs give none)
    assert report.count("<svg") == 4 + any(r["outcome"] != "ok" for r in rows) and "BREACH" in report
    assert summary["clickhouse"]["error"] is None and summary["clickhouse"]["rows"] > 2
    from fleet.results.clickhouse import ClickHouseSink
    from fleet.scenario import ClickHouseOut

    sink = ClickHouseSink(ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", database="fleet_e2e"), clickhouse.env)
    stored = sink.query("SELECT session_id, g2g_latency_ms FROM fleet_e2e.fleet_sessions WHERE campaign_id = {c:String}"
                        " ORDER BY session_id", {"c": summary["campaign_id"]}).to_pylist()
    assert stored == sorted(({"session_id": r["session_id"], "g2g_latency_ms": r["g2g_latency_ms"]} for r in rows),
                            key=lambda r: r["session_id"])
    # the capacity series: the same snapshot rows in Parquet and in ClickHouse (the first read at least: 4
    # orchestrators of the reference network)
    series = sorted((r["orchestrator_address"], r["read_at"], r["idle"]) for r in
                    read_table(summary["results"], "capacity").to_pylist())
    in_clickhouse = sink.query("SELECT orchestrator_address, read_at, idle FROM fleet_e2e.fleet_capacity WHERE "
                               "campaign_id = {c:String} ORDER BY orchestrator_address, read_at",
                               {"c": summary["campaign_id"]}).to_pylist()
    assert len(series) >= 4 and [(r["orchestrator_address"], r["read_at"], r["idle"]) for r in in_clickhouse] == series
    sink.client.command("DROP DATABASE IF EXISTS fleet_e2e")
    sink.close()


def test_an_abort_check_stops_the_campaign_at_its_first_breach(gateway, tmp_path):
    """Also: the sessions the planner could not fit (a budget of 1 for a load of 2) are rows too."""
    scenario = tmp_path / "abort.yaml"
    scenario.write_text(f"extends: {TINY}\nname: abort\n"
                        "load: {shape: stages, stages: [{concurrency: 2, duration_s: 16}], "
                        "session: {duration: 4, max_s: 10, min_s: 2}}\n"
                        "capacity: {max_fraction: 0.0625}\n"  # 1 of the reference network's 16 slots
                        "checks: [{metric: g2g_latency_ms, aggregate: max, op: '<=', threshold: 1, abort: true, "
                        "abort_min_sessions: 1, abort_after_s: 0}]\n"
                        "outputs: {report: false}\n")
    out = subprocess.run([str(BIN / "fleet"), "run", str(scenario), *gateway_args(gateway), "--out", str(tmp_path),
                          "--no-progress", "--json"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-2000:]
    summary = last_json(out.stdout)
    assert summary["aborted"].startswith("max(g2g_latency_ms) <= 1 [overall] = ")
    assert "abort check breached" in out.stderr
    manifest = json.loads((Path(summary["results"]) / "campaign.json").read_text())
    assert manifest["planned_sessions"] == 4 and manifest["planner_skipped"] >= 1
    rows = read_sessions(summary["results"]).to_pylist()
    planner = [r for r in rows if r["error_class"] == "planner_skipped"]
    assert len(planner) == manifest["planner_skipped"] and {r["outcome"] for r in planner} == {"skipped_no_capacity"}
    assert all("cap of 1" in r["error_detail"] for r in planner), planner[0]["error_detail"]
    assert len(rows) - len(planner) <= 2  # it stopped after the first session that ran
    assert "report" not in summary
    assert open_streams(gateway.url) == 0


def test_capacity_shrinking_mid_run_is_respected(tmp_path):
    """Outside users take all but one idle slot mid-run: once the broker's next refresh sees it, the
    campaign runs at most one stream (on the one orchestrator with room) and skips the rest
    itself, before the gateway has to refuse anything."""
    scenario = tmp_path / "shrink.yaml"
    scenario.write_text(f"extends: {TINY}\nname: shrink\n"
                        "target: {capacity: {source: gateway, refresh_s: 1}}\n"
                        "load: {shape: stages, stages: [{concurrency: 4, duration_s: 22}], "
                        "session: {duration: 4, max_s: 10, min_s: 2}}\n"
                        "capacity: {max_fraction: 1.0, idle_reserve: 0, stagger_s: 0, max_per_orchestrator: 2, "
                        "lease_wait_s: 3}\noutputs: {report: false, capacity_series: {min_s: 0}}\n")
    with GatewayProcess(config=default_config(seed=5, status_interval_s=2.0)) as gw:
        proc = subprocess.Popen([str(BIN / "fleet"), "run", str(scenario), *gateway_args(gw), "--out",
                                 str(tmp_path / "results"), "--no-progress", "--json"], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for("3 streams open", lambda: open_streams(gw.url) >= 3, 90)
            keep = "0x" + "0" * 39 + "1"
            httpx.post(f"{gw.url}/debug/capacity", json={"orchestrator": keep, "take": 3}, timeout=10)
            for i in (2, 3, 4):
                httpx.post(f"{gw.url}/debug/capacity", json={"orchestrator": f"0x{i:040x}", "take": 100}, timeout=10)
            t_drop = time.time()
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
        summary = last_json(stdout)
        streams = fleet_streams(gw.url)
        assert open_streams(gw.url) == 0
    settled = t_drop + 2.5  # one refresh (1 s) and margin
    later = [s for s in streams if s["started_unix"] > settled]
    assert later, "no stream started after the capacity dropped"
    assert {s["orchestrator"] for s in later} == {keep}
    for s in later:  # never two of ours on the one free slot
        overlapping = [o for o in streams if o["orchestrator"] == keep and o is not s
                       and o["started_unix"] <= s["started_unix"] < (o["closed_unix"] or 1e18)]
        assert not overlapping, (s, overlapping)
    rows = read_sessions(summary["results"]).to_pylist()
    skipped = [r for r in rows if r["outcome"] == "skipped_no_capacity"]
    assert any(r["error_class"] == "no_slot_leased" for r in skipped)
    # once the broker has seen the drop it keeps the campaign out; the gateway refuses nothing
    assert all(r["error_class"] == "no_slot_leased" for r in skipped if r["started_at"].timestamp() > settled), skipped
    assert summary["broker"]["refreshes"] >= 5
    # the capacity series: every read that changed (min_s 0), each a snapshot of the reference network's 4
    # orchestrators; after the drop, the three taken whole show no idle slot
    series = read_table(summary["results"], "capacity").to_pylist()
    snapshots: dict = {}
    for r in series:
        snapshots.setdefault(r["read_at"], {})[r["orchestrator_address"]] = (r["idle"], r["in_use"])
    assert all(len(s) == 4 for s in snapshots.values()) and len(snapshots) <= summary["broker"]["refreshes"] + 1
    ordered = [snapshots[t] for t in sorted(snapshots)]
    assert all(a != b for a, b in zip(ordered, ordered[1:])), "an unchanged read was stored"
    after = [s for t, s in snapshots.items() if t.timestamp() > settled]
    assert after and all(s[f"0x{i:040x}"][0] == 0 for s in after for i in (2, 3, 4)), after


def test_an_orchestrator_that_refuses_while_advertising_idle_slots_shows_its_refusals(tmp_path):
    """One of the four orchestrators advertises its slots but refuses every job; go-livepeer tries past it, so
    each session aimed at it is an excused skip, exactly as if it were full. Each such row carries the
    evidence (the idle slots the fresh snapshot showed, and its age) and the summary lists the orchestrator
    with every session aimed at it refused; the others ran and are not listed."""
    from fleet.gateway.config import Fault

    broken = "https://orch-1.reference.local:8935"
    scenario = tmp_path / "refuse.yaml"
    scenario.write_text(f"extends: {TINY}\nname: refuse\n"
                        "load: {shape: stages, stages: [{concurrency: 4, duration_s: 8}], "
                        "session: {duration: 4, max_s: 10, min_s: 2}}\n"
                        "capacity: {max_fraction: 1.0, idle_reserve: 0, stagger_s: 0, max_per_orchestrator: 1}\n"
                        "outputs: {report: false}\n")
    faults = (Fault(kind="signaling_error", orchestrator="orch-1.reference", probability=1.0),)
    with GatewayProcess(config=default_config(seed=3, status_interval_s=2.0, faults=faults)) as gw:
        out = subprocess.run([str(BIN / "fleet"), "run", str(scenario), *gateway_args(gw), "--out", str(tmp_path),
                              "--no-progress", "--json"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert open_streams(gw.url) == 0
    summary = last_json(out.stdout)
    rows = read_sessions(summary["results"]).to_pylist()
    aimed = [r for r in rows if r["target_orchestrator"] == broken]
    assert aimed and all(r["target_orchestrator"] for r in rows), rows
    for r in aimed:
        assert (r["outcome"], r["error_class"], r["excused"]) == ("skipped_no_capacity", "no_orchestrators_available",
                                                                   True), r
        # the reference's four slots of it were all idle; refreshed every 5 s, so read well within two refreshes
        assert r["refused_while_idle"] and r["target_idle_slots"] == 4 and 0 <= r["capacity_age_s"] <= 10, \
            (r["refused_while_idle"], r["target_idle_slots"], r["capacity_age_s"])
    others = [r for r in rows if r["target_orchestrator"] != broken]
    assert others and all(r["outcome"] in ("ok", "degraded") and not r["refused_while_idle"] for r in others)
    assert [(x["orchestrator"], x["refused"], x["aimed"], x["share"]) for x in summary["refused_while_idle"]] == \
        [(broken, len(aimed), len(aimed), 1.0)]
    assert "refused while advertising idle capacity" in out.stdout


def test_a_failure_while_opening_undoes_what_was_opened_in_reverse_order(tmp_path):
    """The run's ExitStack: the reference gateway started, then the Prometheus port is taken: the error
    is one line, the gateway process is gone and the signal handlers are back, with no Ray started."""
    import signal
    import socket

    from fleet.errors import InputError
    from fleet.runtime.lifecycle import Campaign, CampaignOptions, open_gateways, open_outputs, prepare
    from fleet.scenario import load_scenario

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    scenario = tmp_path / "s.yaml"
    scenario.write_text(TINY.read_text().replace("url: http://127.0.0.1:1", "url: null").replace(
        "extends: ../../", f"extends: {REPO}/") + f"outputs: {{prometheus: {{host: 127.0.0.1, port: {port}}}}}\n")
    before = signal.getsignal(signal.SIGTERM)
    c = Campaign(load_scenario(str(scenario)), CampaignOptions())
    prepare(c, str(scenario))
    assert signal.getsignal(signal.SIGTERM) is not before
    try:
        open_gateways(c, str(scenario))
        proc = c.gateway_proc.proc
        assert proc.poll() is None  # the reference gateway runs
        with pytest.raises(InputError, match=rf"outputs.prometheus: cannot listen on 127.0.0.1:{port}"):
            open_outputs(c, str(scenario), lambda: pytest.fail("no Parquet output once Prometheus failed"))
    finally:
        c.closing.close()
        taken.close()
    assert proc.poll() is not None and signal.getsignal(signal.SIGTERM) is before
