"""A real Prometheus server (Debian `prometheus`, installed by .ci/run) scrapes a campaign's metrics
endpoint; PromQL over what it stored must equal the campaign's Parquet rows."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.gateway.config import default_config
from fleet.gateway.process import GatewayProcess
from fleet.results.sink import read_sessions
from services import Prometheus, gateway_args, promql

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def prometheus(tmp_path):
    with Prometheus(tmp_path) as p:
        yield p.url, p.target


def test_a_scraping_prometheus_agrees_with_the_parquet_rows(prometheus, tmp_path):
    url, target = prometheus
    scenario = tmp_path / "prom.yaml"
    scenario.write_text(f"extends: {REPO / 'tests' / 'campaigns' / 'tiny.yaml'}\nname: prom\n"
                        f"outputs: {{report: false, prometheus: {{port: {target}, linger_s: 4}}}}\n")
    with GatewayProcess(config=default_config(seed=9, status_interval_s=2.0)) as gw:
        out = subprocess.run([str(Path(sys.executable).parent / "fleet"), "run", str(scenario), *gateway_args(gw),
                              "--out", str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=180,
                             cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # without --json the console ends with the human summary; the JSON summary is in campaign.json
    assert not [line for line in out.stdout.splitlines() if line.startswith("{")], out.stdout[-2000:]
    (directory,) = tmp_path.glob("campaign=*")
    assert out.stdout.strip().splitlines()[-1] == f"results: {directory}"
    summary = json.loads((directory / "campaign.json").read_text())
    rows = read_sessions(directory).to_pylist()
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
    assert {"fleet_sessions_total", "fleet_g2g_latency_ms_bucket", "fleet_lease_budget", "fleet_coverage_age_seconds",
            "fleet_budget_slot_seconds"} <= used
