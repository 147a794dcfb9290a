"""The dashboard over a dataset with known values: its numbers against the campaign verdict's own code
(fleet.results.verdict), the same on DuckDB and on the ClickHouse engine; and its safety (read-only,
hostile query strings are 400s, strict headers, reports only from inside the results directory)."""

from __future__ import annotations

import datetime as dt
import random
import secrets
import statistics
import sys

import httpx
import pytest

from fleet.dashboard import queries as q
from fleet.dashboard.engine import ClickHouseEngine, DuckDBEngine
from fleet.dashboard.server import DashboardServer
from fleet.results.clickhouse import ClickHouseSink
from fleet.results.row import SessionRow
from fleet.results.sink import ParquetSink
from fleet.results.verdict import counted, sla_score
from fleet.scenario import ClickHouseOut, SessionThresholds

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)
ORCHS = {"https://fast.test:8935": ("NVIDIA GeForce RTX 4090", 60.0, 30.0),
         "https://slow.test:8935": ("NVIDIA L40S", 140.0, 22.0),
         "https://flaky.test:8935": ("NVIDIA L40S", 90.0, 26.0),
         "https://weak.test:8935": ("NVIDIA A10", 250.0, 11.0)}


def dataset(n: int = 240, seed: int = 1) -> list[dict]:
    """Sessions over the last 6 days: four orchestrators of known quality, two models, three categories,
    with failures (some excused), skips for capacity and tester failures among them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        orch = list(ORCHS)[i % 4]
        gpu, latency, fps = ORCHS[orch]
        started = NOW - dt.timedelta(hours=rng.uniform(0.5, 6 * 24))
        row = {"campaign_id": f"camp-{i % 3}", "run_id": f"camp-{i % 3}", "scenario": "dash",
               "session_id": f"s{i:04d}", "region": "local", "orchestrator_url": orch, "target_orchestrator": orch,
               "orchestrator_address": f"0x{i % 4:040x}", "gpu_name": gpu, "gpu_id": f"GPU-{i % 4}",
               "model": "streamdiffusion" if i % 5 else "comfyui", "prompt_category": ["portraits", "cartoon",
                                                                                        "lighting"][i % 3],
               "started_unix": started.timestamp(), "duration_s": 20.0, "outcome": "ok", "excused": False,
               "startup_s": round(rng.uniform(1.0, 4.0) * (2 if orch.startswith("https://weak") else 1), 3),
               "g2g_latency_ms": round(rng.gauss(latency, latency * 0.05), 2),
               "output_fps": round(rng.gauss(fps, 0.5), 2), "jitter_coeff": round(rng.uniform(0.02, 0.2), 3),
               "swapped": i % 17 == 0, "gateway_ingest_jitter_ms": round(rng.uniform(0.5, 8.0), 3)}
        if orch.startswith("https://flaky") and i % 3 == 0:
            row.update(outcome="failed", error_phase="pipeline", error_class="gateway_error", startup_s=None,
                       g2g_latency_ms=None, output_fps=None, excused=i % 2 == 0)
        elif i % 23 == 0:   # the broker's own skips, and the gateway's ("no orchestrators available")
            gateways = i % 2 == 0
            row.update(outcome="skipped_no_capacity", error_phase="capacity", startup_s=None, g2g_latency_ms=None,
                       output_fps=None, error_class="no_orchestrators_available" if gateways else "no_slot_leased",
                       refused_while_idle=gateways)
        elif i % 29 == 0:
            row.update(outcome="failed", error_phase="tester", error_class="runner_died", startup_s=None,
                       g2g_latency_ms=None, output_fps=None)
        rows.append(row)
    return rows


def as_row(r: dict) -> SessionRow:
    """A dataset row as the typed row a runner would send (``started_unix`` is its ``started_at``)."""
    return SessionRow.from_record({**{k: v for k, v in r.items() if k != "started_unix"},
                                   "started_at": SessionRow.at(r["started_unix"])})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("dash")
    rows = dataset()
    for cid in sorted({r["campaign_id"] for r in rows}):
        sink = ParquetSink(d, cid, {"scenario": "dash", "started_at": "20261115T000000Z",
                                    "capacity": {"model": "streamdiffusion", "total_slots": 16, "idle_slots": 12,
                                                 "orchestrators": 4}})
        mine = [r for r in rows if r["campaign_id"] == cid]
        sink.write([as_row(r) for r in mine[: len(mine) // 2]])
        sink.write([as_row(r) for r in mine[len(mine) // 2:]])
        sink.finish({"finished_at": "2026-11-15T00:10:00+00:00", "sessions": len(mine),
                    "verdict": {"passed": cid != "camp-1", "sla": {"score": 90.0}}})
    (d / "campaign=camp-0" / "report.html").write_text("<!doctype html><title>r</title><p>report of camp-0")
    return d, rows


def truth(rows: list[dict], orch: str, f: q.Filters) -> dict:
    """What the campaign verdict's code says of one orchestrator, with the network's window as its baseline."""
    since = (f.now - q.WINDOWS[f.window]).timestamp() if q.WINDOWS[f.window] else -1
    window = [r for r in rows if r["started_unix"] >= since and (f.model is None or r["model"] == f.model)]
    mine = [r for r in window if r["orchestrator_url"] == orch]
    return sla_score(mine, SessionThresholds(), baseline=counted(window))


@pytest.mark.parametrize("window,model", [("7d", None), ("24h", None), ("7d", "streamdiffusion")])
def test_the_leaderboard_scores_each_orchestrator_as_the_verdict_code_does(results, window, model):
    d, rows = results
    f = q.Filters(window=window, model=model, now=NOW)
    board, bench = q.leaderboard(DuckDBEngine(d), f)
    assert {r["orchestrator"] for r in board} == set(ORCHS)
    for r in board:
        want = truth(rows, r["orchestrator"], f)
        assert r["score"] == pytest.approx(want["score"], abs=0.01), (r["orchestrator"], r, want)
        for key in ("startup_success", "no_swap_rate", "output_viability"):
            assert r[key] == pytest.approx(want[key], abs=1e-3), key
        assert (r["ptff"], r["e2e"], r["fps"]) == pytest.approx((want["ptff_score"], want["e2e_score"],
                                                                  want["fps_score"]), abs=1e-3)
    # known quality: the fast GPU's quality above the slow one's; the weak one (below 12 fps) ranked last
    quality = {r["orchestrator"]: r["quality"] for r in board}
    assert quality["https://fast.test:8935"] > quality["https://slow.test:8935"]
    assert board[-1]["orchestrator"] == "https://weak.test:8935"
    assert board[-1]["output_viability"] == pytest.approx(0.0, abs=0.05)


def test_the_other_views_count_what_the_rows_hold(results):
    d, rows = results
    engine, f = DuckDBEngine(d), q.Filters(window="all", now=NOW)
    by_model = {r["grp"]: r for r in q.groups(engine, f, "model")}
    assert {k: v["rows_"] for k, v in by_model.items()} == {
        m: sum(1 for r in rows if r["model"] == m) for m in ("streamdiffusion", "comfyui")}
    assert sum(v["counted"] for v in by_model.values()) == len(counted(rows))
    cov = {r["orchestrator"]: r for r in q.coverage(engine, f)}
    for orch in ORCHS:
        mine = [r for r in rows if r["target_orchestrator"] == orch]
        assert cov[orch]["skipped"] == sum(1 for r in mine if r["outcome"] == "skipped_no_capacity")
        last = max(r["started_unix"] for r in mine if r["outcome"] != "skipped_no_capacity")
        assert cov[orch]["last_tested_unix"] == pytest.approx(last, abs=0.001)
        refused = [r for r in mine if r.get("refused_while_idle")]
        assert cov[orch]["refused"] == len(refused)
        assert cov[orch]["sent"] == sum(1 for r in mine if r.get("error_class") != "no_slot_leased")
        if refused:
            assert cov[orch]["last_refused"].timestamp() == pytest.approx(max(r["started_unix"] for r in refused),
                                                                           abs=0.001)
    assert sum(c["refused"] for c in cov.values()) > 0
    # the gateway's ingest jitter, in milliseconds as go-livepeer reports it, per model
    for model, g in by_model.items():
        jitter = sorted(r["gateway_ingest_jitter_ms"] for r in rows if r["model"] == model)
        assert jitter[0] <= g["ingest_jitter_p50_ms"] <= jitter[-1]
        assert g["ingest_jitter_p50_ms"] == pytest.approx(statistics.median(jitter), rel=0.05)
    view = q.orchestrator_view(engine, f, "https://flaky.test:8935")
    failures = {(r["phase"], r["error"]): (r["n"], r["excused_n"]) for r in view["failures"]}
    flaky = [r for r in rows if r["orchestrator_url"] == "https://flaky.test:8935" and r["outcome"] == "failed"
             and r.get("error_phase") == "pipeline"]
    assert failures[("pipeline", "gateway_error")] == (len(flaky), sum(1 for r in flaky if r["excused"]))
    assert len(view["recent"]) == 50 and view["series"] and view["band"]


def test_without_the_charts_extra_an_orchestrator_view_says_how_to_get_its_charts(results, monkeypatch):
    """matplotlib made unimportable in this process (as in an install without the charts extra)."""
    from fleet.dashboard.pages import orchestrator_page

    d, _ = results
    f = q.Filters(window="all", now=NOW)
    with_charts = orchestrator_page(DuckDBEngine(d), f, {}, "https://flaky.test:8935")
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    page = orchestrator_page(DuckDBEngine(d), f, {}, "https://flaky.test:8935")
    assert with_charts.count("<svg") == 2 and "<svg" not in page
    assert page.count("pip install &#x27;fleet[charts]&#x27;") == 2 and "Failures by phase and error class" in page


@pytest.mark.slow
def test_clickhouse_answers_every_view_with_the_same_numbers(results, clickhouse):
    d, rows = results
    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", user_env="FLEET_CLICKHOUSE_USER",
                        password_env="FLEET_CLICKHOUSE_PASSWORD", database=f"fleet_d{secrets.token_hex(3)}")
    sink = ClickHouseSink(cfg, clickhouse.env)
    try:
        from fleet.results.clickhouse import push_campaign

        for campaign in sorted(d.glob("campaign=*")):
            push_campaign(campaign, sink)
        ch, duck = ClickHouseEngine(sink), DuckDBEngine(d)
        for f in (q.Filters(window="7d", now=NOW), q.Filters(window="all", model="comfyui", now=NOW)):
            a, b = q.leaderboard(duck, f)[0], q.leaderboard(ch, f)[0]
            assert [r["orchestrator"] for r in a] == [r["orchestrator"] for r in b]
            for x, y in zip(a, b):
                assert x["score"] == pytest.approx(y["score"], abs=0.01) and x["counted"] == y["counted"]
                assert x["g2g_p50"] == pytest.approx(y["g2g_p50"], rel=1e-6)
            ga = {r["grp"]: r for r in q.groups(duck, f, "category")}
            gb = {r["grp"]: r for r in q.groups(ch, f, "category")}
            assert {k: (v["rows_"], v["counted"]) for k, v in ga.items()} == \
                {k: (v["rows_"], v["counted"]) for k, v in gb.items()}
            assert all(ga[k]["g2g_p50"] == pytest.approx(gb[k]["g2g_p50"], rel=1e-6) for k in ga)
            assert [(r["orchestrator"], r["refused"], r["sent"]) for r in q.coverage(duck, f)] == \
                [(r["orchestrator"], r["refused"], r["sent"]) for r in q.coverage(ch, f)]
            assert [r["n"] for r in q.orchestrator_view(duck, f, "https://flaky.test:8935")["failures"]] == \
                [r["n"] for r in q.orchestrator_view(ch, f, "https://flaky.test:8935")["failures"]]
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS {cfg.database}")
        sink.close()


@pytest.fixture(scope="module")
def server(results):
    d, _ = results
    srv = DashboardServer(DuckDBEngine(d), d, port=0, quiet=True).start()
    yield srv
    srv.close()


HOSTILE = ["/?window=1y", "/?x=1", "/?model=%3Cscript%3Ealert(1)%3C/script%3E", "/?model=a&model=b",
           "/?region=%27%20OR%201=1%20--", "/orchestrator", "/?by=drop", "/?category=" + "a" * 400,
           "/?model=%00", "/workflows?window=%E2%80%AE"]


@pytest.mark.parametrize("path", HOSTILE)
def test_a_hostile_query_string_gets_a_one_line_400(server, path):
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code == 400 and r.text.startswith("bad request: ") and r.text.count("\n") == 1, r.text
    assert "<script" not in r.text and "Traceback" not in r.text


def test_every_view_is_read_only_escaped_and_sent_with_strict_headers(server, results):
    for path in ("/", "/?by=gpu", "/workflows", "/capacity", "/campaigns", "/workflows?window=all&model=&region=&category=",
                 "/orchestrator?id=https%3A%2F%2Fflaky.test%3A8935&window=all"):
        r = httpx.get(server.url + path, timeout=30)
        assert r.status_code == 200, (path, r.text[:300])
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script" not in csp and "<script" not in r.text
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert httpx.post(server.url + "/", timeout=10).status_code == 405
    assert httpx.delete(server.url + "/campaigns", timeout=10).status_code == 405
    assert httpx.get(server.url + "/campaign/camp-0/report", timeout=10).text.endswith("report of camp-0")
    for bad in ("/campaign/..%2F..%2Fetc/report", "/campaign/camp-1/report", "/campaign/%2e%2e/report", "/nope"):
        assert httpx.get(server.url + bad, timeout=10).status_code == 404, bad
