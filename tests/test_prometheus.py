"""A real Prometheus server (Debian `prometheus`, installed by .ci/run) scrapes a campaign's metrics
endpoint; PromQL over what it stored must equal the campaign's Parquet rows."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleet.gateway.config import default_config
from fleet.gateway.process import GatewayProcess
from fleet.results.sink import read_sessions

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = os.environ.get("FLEET_PROMETHEUS", "/usr/bin/prometheus")
DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def prometheus(tmp_path):
    if not os.path.exists(PROMETHEUS):
        if os.environ.get("FLEET_REQUIRE_INTEROP"):
            pytest.fail(f"{PROMETHEUS} is missing (.ci/run should have installed Debian's prometheus)")
        pytest.skip(f"{PROMETHEUS} is missing (apt-get install prometheus)")
    target, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                      f"scrape_configs:\n  - job_name: fleet\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling its readiness endpoint, with the deadline above
    else:
        proc.kill()
        pytest.fail("prometheus did not become ready")
    yield url, target
    proc.terminate()
    proc.wait(20)


def promql(url: str, query: str, at: float) -> list[dict]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": query, "time": at}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_a_scraping_prometheus_agrees_with_the_parquet_rows(prometheus, tmp_path):
    url, target = prometheus
    scenario = tmp_path / "prom.yaml"
    scenario.write_text(f"extends: {REPO / 'tests' / 'campaigns' / 'tiny.yaml'}\nname: prom\n"
                        f"outputs: {{report: false, prometheus: {{port: {target}, linger_s: 4}}}}\n")
    with GatewayProcess(config=default_config(seed=9)) as gw:
        out = subprocess.run([str(Path(sys.executable).parent / "fleet"), "run", str(scenario), "--gateway-url", gw.url,
                              "--out", str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=180,
                             cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    rows = read_sessions(summary["results"]).to_pylist()
    # the last scrape inside the linger holds the final counts
    at = dt.datetime.fromisoformat(summary["finished_at"]).timestamp() + 3.0
    total = promql(url, "sum(fleet_sessions_total)", at)
    assert total and float(total[0]["value"][1]) == len(rows) == 2
    by_outcome = {r["metric"]["outcome"]: float(r["value"][1]) for r in promql(url, "sum by (outcome) (fleet_sessions_total)", at)}
    want: dict[str, float] = {}
    for r in rows:
        want[r["outcome"]] = want.get(r["outcome"], 0) + 1
    assert by_outcome == want
    per_orch = {r["metric"]["orchestrator"]: float(r["value"][1])
                for r in promql(url, "sum by (orchestrator) (fleet_g2g_latency_ms_count)", at)}
    want_orch: dict[str, float] = {}
    for r in rows:
        if r["g2g_latency_ms"] is not None:
            want_orch[r["orchestrator_address"]] = want_orch.get(r["orchestrator_address"], 0) + 1
    assert per_orch == want_orch
    latency_sum = float(promql(url, "sum(fleet_g2g_latency_ms_sum)", at)[0]["value"][1])
    assert latency_sum == pytest.approx(sum(r["g2g_latency_ms"] for r in rows if r["g2g_latency_ms"] is not None))
    tested = {r["metric"]["orchestrator"] for r in promql(url, "fleet_orchestrator_last_tested_timestamp_seconds", at)}
    assert tested == {r["orchestrator_address"] for r in rows}
    assert promql(url, "fleet_lease_budget", at), "the broker's budget gauge was never scraped"


def test_the_grafana_dashboard_is_valid_json_and_names_only_metrics_that_exist():
    import re

    from fleet.results.prometheus import CampaignMetrics

    dashboard = json.loads((REPO / "docs" / "grafana-fleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    exposed = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family in CampaignMetrics().registry.collect():  # the names the exposition format gives each family
        exposed |= {family.name + suffix for suffix in suffixes[family.type]}
    used = {name for e in exprs for name in re.findall(r"\bfleet_[a-z0-9_]+\b", e)}
    assert used and used <= exposed, used - exposed
    assert {"fleet_sessions_total", "fleet_g2g_latency_ms_bucket", "fleet_lease_budget"} <= used
