"""Results: sketches against exact percentiles, SLA verdicts and JUnit, the ClickHouse sink (on the
chdb fixture, or a real server with FLEET_CLICKHOUSE_URL), `fleet results push`, `fleet compare`
and `fleet report` on real campaign directories written by the Parquet sink."""

from __future__ import annotations

import pickle
import re
import secrets
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import InputError
from fleet.metrics import METRICS
from fleet.results.clickhouse import ClickHouseError, ClickHouseSink, ddl, push_campaign
from fleet.results.compare import NUMBERS, RATES, compare
from fleet.probe.types import ProbeResult
from fleet.results.row import SessionRow
from fleet.results.sink import (SESSIONS, SUMMARIES, Batch, ParquetSink, read_sessions, read_table, summaries_table,
                                tables_of)
from fleet.results.sketches import ALPHA, QUANTILES, Sketches, session_sketches, sketch_from_bytes
from fleet.results.verdict import evaluate, junit_xml, sla_score
from fleet.scenario import ClickHouseOut, Scenario, load_scenario

REPO = Path(__file__).resolve().parent.parent
ORCHS = ["0x" + f"{i:040x}" for i in (1, 2, 3)]


def probe_result(**kw) -> ProbeResult:
    """What a probe returns (fleet.probe.types.ProbeResult), with these fields."""
    return ProbeResult(**{"session_id": "s", "dialect": "livepeer", "gateway": "http://gw", **kw})


def runner_row(result: ProbeResult, **columns) -> SessionRow:
    """A session's row made as a runner makes it: the probe's result, its sketches, the runner's columns."""
    return SessionRow.measured(result, sketches=session_sketches(result), **columns)


def session_results(n: int, seed: int, latency_scale: float = 1.0,
                    fail_every: int = 0) -> list[tuple[ProbeResult, dict]]:
    """Sessions as probes return them (per-frame latency samples, per-second fps) and the runner's columns."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lat = rng.lognormal(np.log(80 * latency_scale), 0.25, size=60)
        failed = bool(fail_every and i % fail_every == 0)
        result = probe_result(
            session_id=f"s{seed}-{i}", orchestrator_address=ORCHS[i % 3], gpu_name="NVIDIA L40S",
            outcome="failed" if failed else "ok", error_phase="media" if failed else None,
            error_class="no_output" if failed else None, started_unix=1_790_000_000 + 10 * i,
            startup_s=None if failed else float(rng.uniform(0.8, 2.0)),
            output_fps=None if failed else float(rng.normal(29, 0.5)),
            g2g_latency_ms=None if failed else float(np.median(lat)),
            jitter_coeff=float(rng.uniform(0.02, 0.08)), swapped=False, frames_received=600,
            latency_samples=[] if failed else [(k / 30, float(v), "rtp_timestamp") for k, v in enumerate(lat)],
            per_second=[{"t_s": t, "fps_out": int(rng.integers(28, 31)), "fps_in": 30, "latency_ms_p50": 80.0}
                        for t in range(10)],
            events=[(0.0, "gateway_receive_stream_request", {})])
        rows.append((result, {"campaign_id": f"c{seed}", "run_id": f"c{seed}", "scenario": "unit",
                              "region": ["east", "west"][i % 2], "model": "streamdiffusion", "prompt_id": f"p{i % 4}",
                              "prompt_category": ["portraits", "cartoon"][i % 2]}))
    return rows


def session_rows(n: int, seed: int, latency_scale: float = 1.0, fail_every: int = 0) -> list[SessionRow]:
    """Sessions as the runner returns them (fleet.runtime.runner: its result, its sketches, its columns)."""
    return [runner_row(r, **cols) for r, cols in session_results(n, seed, latency_scale, fail_every)]


def stored(rows: list[SessionRow]) -> list[dict]:
    """The rows as the sessions table holds them (what the verdict, compare and the SLA score read)."""
    return tables_of(rows)["sessions"].to_pylist()


def write_campaign(root: Path, campaign_id: str, rows: list[SessionRow], batch: int = 7) -> Path:
    sink = ParquetSink(root, campaign_id, {"scenario": "unit", "regions": ["east", "west"]})
    sk = Sketches()
    for i in range(0, len(rows), batch):
        part = [replace(r, campaign_id=campaign_id, run_id=campaign_id) for r in rows[i:i + batch]]
        sink.write(part)
        sk.add(Batch.of(part))
    ids = {"campaign_id": campaign_id, "run_id": campaign_id, "scenario": "unit"}
    sink.add(Batch(sink.seq + 1, (), {"summaries": summaries_table(sk.rows(), ids)}))
    sink.finish({"verdict": None})
    return sink.dir


# --- sketches ----------------------------------------------------------------------------------

def latency_row(region: str, values: list[float]) -> SessionRow:
    return runner_row(probe_result(latency_samples=[(0, v, "m") for v in values]), region=region)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.5, 5000, allow_nan=False), min_size=1, max_size=400), min_size=1, max_size=5))
def test_merged_regional_sketches_are_within_the_documented_bound(regions):
    sk = Sketches()
    for i, values in enumerate(regions):
        sk.add(Batch.of([latency_row(f"r{i}", values)]))
    exact = np.sort(np.concatenate([np.array(v) for v in regions]))
    merged = sk.merged("g2g_latency_ms")
    assert merged.count == len(exact)
    for q in (0.5, 0.9, 0.95, 0.99):
        truth = exact[int(q * (len(exact) - 1))]  # the value of rank q, as DDSketch defines it
        assert abs(merged.get_quantile_value(q) - truth) <= ALPHA * truth + 1e-9, (q, truth)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.5, 5000, allow_nan=False), max_size=300), min_size=1, max_size=8))
def test_sketches_sent_per_session_merge_to_what_every_value_gives(sessions):
    """What a runner sends (a serialized sketch per session, no per-frame list) merges, in the driver, to
    the very sketch every value would have made: the same count and the same quantiles."""
    every = DDSketch(ALPHA)
    for v in (v for values in sessions for v in values):
        every.add(v)
    by_sketch = Sketches()
    by_sketch.add(Batch.of([latency_row("r", values) for values in sessions]))
    b = by_sketch.merged("g2g_latency_ms")
    assert (b is None) == (not any(sessions))
    if b is not None:
        assert b.count == every.count == sum(len(v) for v in sessions)
        assert [b.get_quantile_value(q) for q in QUANTILES] == [every.get_quantile_value(q) for q in QUANTILES]


def test_a_long_sessions_sketch_is_small_and_does_not_grow_with_its_length():
    rng = np.random.default_rng(7)
    lat = rng.lognormal(np.log(80), 0.25, size=54_000)  # 30 minutes at 30 fps
    def size(n: int) -> int:
        samples = [(k / 30, float(v), "m") for k, v in enumerate(lat[:n])]
        return len(session_sketches(probe_result(latency_samples=samples))["g2g_latency_ms"])
    as_list = len(pickle.dumps([(k / 30, float(v), "rtp_timestamp") for k, v in enumerate(lat)]))
    assert size(54_000) < 4096 and as_list > 1_000_000 and size(54_000) <= 2 * size(1_800)


def test_a_row_sent_with_a_sketch_stores_its_sample_count(tmp_path):
    (row,) = session_rows(1, 3)
    assert row.sketches and "latency_samples" not in pickle.dumps(row).decode("latin-1")
    sink = ParquetSink(tmp_path, "c-count", {"scenario": "unit"})
    sink.write([row])
    assert read_table(sink.dir, "sessions").column("latency_sample_count").to_pylist() == [60]


def test_summaries_round_trip_through_parquet(tmp_path):
    d = write_campaign(tmp_path, "c-sk", session_rows(40, 1))
    table = read_table(d, "summaries")
    assert table.schema.equals(SUMMARIES, check_metadata=False)
    assert {(r["region"], r["metric"]) for r in table.to_pylist()} >= {("east", "g2g_latency_ms"),
                                                                         ("west", "output_fps")}
    sk = Sketches()
    for r in table.to_pylist():
        sk.add_sketch(r["region"], r["metric"], sketch_from_bytes(r["sketch"]))
    exact = np.sort([s[1] for r, _ in session_results(40, 1) for s in r.latency_samples])
    p95 = sk.campaign_quantiles()["g2g_latency_ms"]["p95"]
    assert abs(p95 - exact[int(0.95 * (len(exact) - 1))]) <= ALPHA * p95 + 1e-3


# --- verdicts ----------------------------------------------------------------------------------

def scenario_with(checks: str) -> Scenario:
    text = (REPO / "tests/campaigns/tiny.yaml").read_text()
    return load_scenario_text(text + f"checks:\n{checks}")


def load_scenario_text(text: str) -> Scenario:
    path = REPO / "tests" / "campaigns" / f".tmp-{secrets.token_hex(4)}.yaml"
    path.write_text(text)
    try:
        return load_scenario(path)
    finally:
        path.unlink()


def test_checks_overall_and_per_group_with_skips_and_tester_failures_left_out():
    rows = stored(session_rows(30, 2, fail_every=5))  # 6 failed of 30
    rows += [{**rows[1], "session_id": "skip", "outcome": "skipped_no_capacity", "error_phase": "capacity"},
             {**rows[1], "session_id": "tester", "outcome": "failed", "error_phase": "tester"}]
    s = scenario_with("  - {metric: failed, aggregate: rate, op: '<=', threshold: 0.1}\n"
                      "  - {metric: g2g_latency_ms, aggregate: p50, op: '<=', threshold: 1, group_by: [orchestrator]}\n"
                      "  - {metric: skipped_no_capacity, aggregate: rate, op: '<', threshold: 0.5}\n")
    v = evaluate(s, rows)
    by = {(c.check, c.group_label): c for c in v.checks}
    failed = by[("rate(failed) <= 0.1", "overall")]
    assert failed.sessions == 30 and failed.value == pytest.approx(6 / 30) and failed.passed is False
    lat = [c for c in v.checks if c.metric == "g2g_latency_ms"]
    assert {c.group["orchestrator"] for c in lat} == set(ORCHS) and all(c.passed is False for c in lat)
    o1 = [r["g2g_latency_ms"] for r in rows[:30] if r["orchestrator_address"] == ORCHS[0] and r["g2g_latency_ms"]]
    assert by[("p50(g2g_latency_ms) <= 1", f"orchestrator={ORCHS[0]}")].value == pytest.approx(np.percentile(o1, 50))
    skipped = by[("rate(skipped_no_capacity) < 0.5", "overall")]
    assert skipped.sessions == 32 and skipped.value == pytest.approx(1 / 32) and skipped.passed
    assert v.goodput == pytest.approx(24 / 30) and v.counted == 30
    assert v.goodput_by["region"]["east"] == pytest.approx(
        sum(1 for r in rows[:30] if r["region"] == "east" and r["outcome"] == "ok")
        / sum(1 for r in rows[:30] if r["region"] == "east"))
    xml = ET.fromstring(junit_xml(v, "fleet.unit"))
    suite = xml.find("testsuite")
    assert int(suite.get("tests")) == len(v.checks) and int(suite.get("failures")) == len(v.breached) == 4
    assert len(suite.findall("testcase/failure")) == 4


def test_sla_score_follows_the_network_formula():
    t = load_scenario(REPO / "tests/campaigns/tiny.yaml").workflow.thresholds
    good = {"outcome": "ok", "startup_s": t.max_startup_s / 4, "g2g_latency_ms": t.max_g2g_latency_ms / 4,
            "output_fps": t.min_output_fps * 2, "swapped": False}
    bad = {"outcome": "failed", "error_phase": "media", "startup_s": None, "g2g_latency_ms": None,
           "output_fps": 0.0, "swapped": True}
    skipped = {"outcome": "skipped_no_capacity", "error_phase": "capacity"}
    assert sla_score([good] * 4, t)["score"] == 100.0
    s = sla_score([good] * 3 + [bad] + [skipped], t)
    # coverage 4/5; reliability 0.4*3/4 + 0.2*3/4 + 0.4*3/4 = 0.75;
    # quality 0.6*(0.6*1 + 0.4*1) + 0.4*(3/4): the failed session's 0 fps scores 0, its missing latencies nothing
    assert s["coverage"] == 0.8 and s["reliability"] == 0.75 and s["quality"] == 0.9
    assert s["score"] == pytest.approx(100 * 0.8 * (0.7 * 0.75 + 0.3 * 0.9), abs=0.01) == 63.6
    half = {**good, "startup_s": t.max_startup_s * 0.75}  # halfway between p50 (max/2) and p90 (max)
    assert sla_score([half], t)["ptff_score"] == pytest.approx(0.5)


# --- ClickHouse ----------------------------------------------------------------------------------

@pytest.fixture
def ch_cfg(clickhouse):
    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", user_env="FLEET_CLICKHOUSE_USER",
                        password_env="FLEET_CLICKHOUSE_PASSWORD", database=f"fleet_t{secrets.token_hex(3)}")
    yield cfg
    sink = ClickHouseSink(cfg, clickhouse.env)
    sink.client.command(f"DROP DATABASE IF EXISTS {cfg.database}")
    sink.close()


def count(sink: ClickHouseSink, kind: str, campaign: str) -> int:
    return sink.query(f"SELECT count() AS n FROM {sink.table(kind)} WHERE campaign_id = {{c:String}}",
                      {"c": campaign}).column("n")[0].as_py()


@pytest.mark.slow
def test_clickhouse_push_is_idempotent_and_survives_a_lost_response(clickhouse, ch_cfg, tmp_path, cli, monkeypatch):
    rows = session_rows(25, 3, fail_every=6)
    d = write_campaign(tmp_path, "c-push", rows)
    sink = ClickHouseSink(ch_cfg, clickhouse.env, backoff_s=0.01)
    counts = push_campaign(d, sink)
    assert counts["sessions"] == 25 and counts["samples"] == 250 and counts["events"] == 25
    assert count(sink, "sessions", "c-push") == 25 and count(sink, "samples", "c-push") == 250
    for k, v in clickhouse.env.items():
        monkeypatch.setenv(k, v)
    again = cli("results", "push", str(d), "--database", ch_cfg.database)  # the same batches once more
    assert again.code == 0 and "sessions 25" in again.out, again.err
    assert count(sink, "sessions", "c-push") == 25 and count(sink, "events", "c-push") == 25
    if clickhouse.front is not None:  # the fixture can lose a response after the engine took the rows
        more = write_campaign(tmp_path, "c-retry", session_rows(8, 4))
        clickhouse.front.fail_after_commit = 1
        push_campaign(more, sink)
        assert clickhouse.front.fail_after_commit == 0, "the fault was never hit"
        assert count(sink, "sessions", "c-retry") == 8
    table = read_sessions(d)
    per_orch = sink.query(f"SELECT orchestrator_address AS o, count() AS n, avg(g2g_latency_ms) AS lat "
                          f"FROM {sink.table('sessions')} WHERE campaign_id = 'c-push' AND orchestrator_address = "
                          "{o:String} AND started_at BETWEEN {a:DateTime64(3)} AND {b:DateTime64(3)} GROUP BY o",
                          {"o": ORCHS[1], "a": table.column("started_at")[0].as_py(),
                           "b": table.column("started_at")[-1].as_py()}).to_pylist()
    ours = [r for r in rows if r.orchestrator_address == ORCHS[1]]
    assert per_orch[0]["n"] == len(ours)
    assert per_orch[0]["lat"] == pytest.approx(np.mean([r.g2g_latency_ms for r in ours
                                                        if r.g2g_latency_ms is not None]))
    sink.close()


def test_clickhouse_ddl_orders_for_per_orchestrator_time_ranges():
    stmts = ddl("fleet", "fleet_")
    sessions = next(s for s in stmts if "fleet.fleet_sessions" in s)
    assert "ORDER BY (orchestrator_address, started_at, session_id)" in sessions
    assert "PARTITION BY toYYYYMM(started_at)" in sessions and "non_replicated_deduplication_window" in sessions
    assert len([s for s in stmts if s.startswith("CREATE")]) == 6 and all(f.name in sessions for f in SESSIONS)


@pytest.mark.slow
def test_a_table_from_an_older_schema_gains_the_new_columns(clickhouse):
    """Schema changes are additive: the DDL adds to an existing table the columns it lacks."""
    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", database="fleet_migrate")
    sink = ClickHouseSink(cfg, clickhouse.env)
    try:
        sink.client.command("ALTER TABLE fleet_migrate.fleet_sessions DROP COLUMN jitter_coeff_p95")  # as schema 3
        assert "jitter_coeff_p95" not in sink.client.query(
            "SELECT * FROM fleet_migrate.fleet_sessions LIMIT 0").column_names
        for stmt in ddl("fleet_migrate", "fleet_"):
            sink.client.command(stmt)
        assert "jitter_coeff_p95" in sink.client.query("SELECT * FROM fleet_migrate.fleet_sessions LIMIT 0").column_names
    finally:
        sink.client.command("DROP DATABASE IF EXISTS fleet_migrate")
        sink.close()


@pytest.mark.slow
def test_clickhouse_errors_name_the_variable_never_the_secret(clickhouse):
    password = "hunter2-" + secrets.token_hex(4)
    env = {"FLEET_CLICKHOUSE_URL": f"http://default:{password}@127.0.0.1:9", "FLEET_CLICKHOUSE_PASSWORD": password}
    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", password_env="FLEET_CLICKHOUSE_PASSWORD")
    with pytest.raises(ClickHouseError) as err:
        ClickHouseSink(cfg, env)
    assert "$FLEET_CLICKHOUSE_URL" in str(err.value) and password not in str(err.value)
    with pytest.raises(InputError, match="FLEET_CLICKHOUSE_URL is not set"):
        ClickHouseSink(cfg, {})


# --- compare and report --------------------------------------------------------------------------

def test_compare_flags_a_planted_regression_and_passes_an_unchanged_rerun(tmp_path, cli):
    base = write_campaign(tmp_path / "a", "base", session_rows(60, 10))
    rerun = write_campaign(tmp_path / "b", "rerun", session_rows(60, 11))          # same distributions
    slow = write_campaign(tmp_path / "c", "slow", session_rows(60, 12, latency_scale=1.3, fail_every=4))
    same = cli("compare", str(base), str(rerun))
    assert same.code == 0 and "0 regressions" in same.out, same.out
    worse = cli("compare", str(base), str(slow))
    assert worse.code == 3, worse.out
    assert "REGRESSION g2g_latency_ms [overall]" in worse.out and "REGRESSION failed [overall]" in worse.out
    assert f"REGRESSION g2g_latency_ms [orchestrator={ORCHS[0]}]" in worse.out
    few = compare(stored(session_rows(3, 10)), stored(session_rows(3, 12, latency_scale=2.0)), min_sessions=5)
    assert few == []  # below the minimum sample size nothing is judged
    assert set(NUMBERS) | set(RATES) <= set(METRICS)  # compare only names catalogued metrics
    missing = cli("compare", str(tmp_path / "nowhere"), str(base))
    assert missing.code == 1 and missing.err.strip().endswith("not a campaign directory (no campaign.json)")


def test_report_is_one_self_contained_file_with_every_plot(tmp_path, cli):
    d = write_campaign(tmp_path, "c-rep", session_rows(24, 5, fail_every=5))
    out = cli("report", str(d))
    assert out.code == 0
    page = Path(out.out.strip()).read_text()
    assert page.count("<svg") == 5 and "No data for this plot" not in page
    assert "<script" not in page and "<img" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)=["']?https?:|url\(\s*["']?https?:""", page)  # nothing fetched
    for title in ("Startup, phase by phase", "Latency CDF per orchestrator", "Output fps over time",
                  "Failure taxonomy", "Prompt categories side by side", "SLA checks"):
        assert title in page
    assert pq.read_table(next(d.glob("date=*/sessions-*.parquet"))).num_rows > 0


def test_without_the_charts_extra_the_report_keeps_every_table_and_says_how_to_get_charts(tmp_path, cli,
                                                                                      monkeypatch):
    """matplotlib made unimportable in this process (as in an install without the charts extra)."""
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    d = write_campaign(tmp_path, "c-plain", session_rows(24, 5, fail_every=5))
    out = cli("report", str(d))
    assert out.code == 0 and out.err == ""
    page = Path(out.out.strip()).read_text()
    assert "<svg" not in page and page.count("pip install &#x27;fleet[charts]&#x27;") == 5
    assert "SLA checks" in page and "Distributions" in page and "<td>g2g_latency_ms</td>" in page


@pytest.mark.slow
def test_compare_reads_clickhouse_time_windows(clickhouse, ch_cfg, tmp_path, cli, monkeypatch):
    """Baseline and current as time windows of the sessions table: last week's rows against this run's."""
    old = [replace(r, scenario="unit", started_at=r.started_at - timedelta(days=7)) for r in session_rows(40, 20)]
    new = [replace(r, scenario="unit") for r in session_rows(40, 21, latency_scale=1.4)]
    sink = ClickHouseSink(ch_cfg, clickhouse.env)
    push_campaign(write_campaign(tmp_path / "old", "old", old), sink)
    push_campaign(write_campaign(tmp_path / "new", "new", new), sink)
    sink.close()
    for k, v in {**clickhouse.env, "FLEET_CLICKHOUSE_DATABASE": ch_cfg.database}.items():
        monkeypatch.setenv(k, v)
    out = cli("compare", "clickhouse:unit@2026-09-10T00:00..2026-09-20T00:00",
              "clickhouse:unit@2026-09-20T00:00..2026-09-30T00:00")
    assert out.code == 3 and "(40 sessions) -> current" in out.out, out.out + out.err
    assert "REGRESSION g2g_latency_ms [overall]" in out.out


def test_excused_failures_count_neither_way_but_have_their_own_rate():
    from fleet.results.verdict import counted, evaluate_checks
    from fleet.scenario import CheckSpec

    rows = [{"outcome": "ok", "output_fps": 30.0},
            {"outcome": "failed", "excused": True, "error_phase": "media", "error_class": "whip_disconnected"},
            {"outcome": "failed", "excused": False, "error_phase": "pipeline", "error_class": "gateway_error"},
            {"outcome": "skipped_no_capacity", "excused": True, "error_phase": "capacity"}]
    assert [r.get("error_class") for r in counted(rows)] == [None, "gateway_error"]
    failed, excused = evaluate_checks([CheckSpec(metric="failed", aggregate="rate", op="<=", threshold=1.0),
                                       CheckSpec(metric="excused", aggregate="rate", op="<=", threshold=1.0)], rows)
    assert failed.value == 0.5               # 1 of the 2 counted sessions: the excused one is left out
    assert excused.value == pytest.approx(1 / 3)  # over the 3 sessions that ran (not the skipped one)


def test_an_abort_check_waits_for_its_minimum_sessions_and_grace_and_reads_each_row_once():
    from fleet.results.verdict import AbortWatch
    from fleet.scenario import CheckSpec

    check = CheckSpec(metric="failed", aggregate="rate", op="<=", threshold=0.2, abort=True, group_by=("region",),
                      abort_min_sessions=5, abort_after_s=10.0)
    watch = AbortWatch([check, CheckSpec(metric="failed", aggregate="rate", op="<=", threshold=0.0)])
    assert len(watch.checks) == 1  # only abort checks are watched
    bad = SessionRow(session_id="b", outcome="failed", error_phase="pipeline", region="east")
    good = SessionRow(session_id="g", outcome="ok", region="east")
    assert watch.add([bad], elapsed_s=60.0) is None            # the first finished session: too few to judge
    assert watch.add([bad, good, good], elapsed_s=5.0) is None  # five sessions... not yet: within the grace
    assert watch.values[0][("east",)] == [1.0, 1.0, 0.0, 0.0]   # each row read once, kept as its value only
    skipped = SessionRow(session_id="s", outcome="skipped_no_capacity", region="east")
    assert watch.add([skipped], elapsed_s=20.0) is None          # a skipped session does not count
    breach = watch.add([good], elapsed_s=20.0)
    assert breach is not None and breach.group == {"region": "east"} and breach.value == 0.4 and breach.sessions == 5
    assert watch.add([replace(bad, region="west")], 30.0) is None


def test_the_tester_is_a_bottleneck_when_its_loop_lags_is_busy_stamped_most_frames_in_stalls_or_sent_unevenly():
    from fleet.runtime.runner import tester_bottleneck

    quiet = SessionRow(session_id="q", outcome="ok", tester_loop_lag_ms_mean=0.9, tester_loop_busy_pct=12.0,
                       jitter_intervals=200, jitter_suspect_intervals=20)
    assert not tester_bottleneck(quiet)
    assert tester_bottleneck(replace(quiet, tester_loop_lag_ms_mean=25.0))
    assert tester_bottleneck(replace(quiet, tester_loop_busy_pct=95.0))  # one core: the loop's thread, not the host
    assert tester_bottleneck(replace(quiet, jitter_intervals=40, jitter_suspect_intervals=60))
    # its own sending's jitter explains the session's miss of 0.1: 0.12 less 0.07 (as squares) is 0.0975
    missed = replace(quiet, jitter_coeff=0.12, tester_send_jitter_coeff=0.07, frames_sent=600, frames_received=600)
    assert tester_bottleneck(missed, max_jitter_coeff=0.1)
    assert not tester_bottleneck(replace(missed, tester_send_jitter_coeff=0.06), 0.1)  # 0.1058 left: the network's
    assert not tester_bottleneck(replace(missed, jitter_coeff=0.1, tester_send_jitter_coeff=0.1), 0.1)  # no miss
    # exactly the threshold left (binary fractions: 0.625^2 - 0.375^2 = 0.5^2 with no rounding): within it
    assert tester_bottleneck(replace(missed, jitter_coeff=0.625, tester_send_jitter_coeff=0.375), 0.5)
    # a healthy tester's sending (0.05 at most) is never the bottleneck, though it would explain a miss by a hair
    assert not tester_bottleneck(replace(missed, jitter_coeff=0.1012, tester_send_jitter_coeff=0.0165), 0.1)
    assert not tester_bottleneck(replace(missed, jitter_coeff=0.1, tester_send_jitter_coeff=0.05), 0.09)
    assert tester_bottleneck(replace(missed, jitter_coeff=0.1, tester_send_jitter_coeff=0.0501), 0.09)
    assert not tester_bottleneck(missed)  # no threshold given: not judged
    # an output of every other frame carries half the sending's jitter: 0.035 is a healthy tester's
    assert not tester_bottleneck(replace(missed, frames_received=300), 0.1)
    assert not tester_bottleneck(replace(missed, frames_sent=None), 0.1)  # nothing sent: nothing to judge
    assert not tester_bottleneck(SessionRow(session_id="n", outcome="ok"))


def test_the_sla_benchmark_is_the_stored_seven_day_history_once_it_spans_enough_days(tmp_path):
    """Campaigns stored under date= partitions: four days of history give NaaP's benchmark (latency anchors
    at the history's p50 / p90); one day does not, and the thresholds stay the benchmark."""
    import datetime as dt

    from fleet.results.verdict import history_baseline, sla_score
    from fleet.scenario import SessionThresholds

    today = dt.date(2026, 11, 22)
    history = []
    for d in range(4):
        rows = session_rows(20, 100 + d, latency_scale=1.0 + d * 0.1)
        history += rows
        directory = write_campaign(tmp_path, f"h{d}", rows)
        (directory / next(directory.glob("date=*")).name).rename(directory / f"date={today - dt.timedelta(days=d)}")
    old = write_campaign(tmp_path, "old", session_rows(40, 200, latency_scale=5.0))  # 9 days ago: out of the window
    (old / next(old.glob("date=*")).name).rename(old / f"date={today - dt.timedelta(days=9)}")
    found = history_baseline(tmp_path, "streamdiffusion", today=today)
    assert found is not None
    rows, label = found
    assert label == "7-day history (80 sessions over 4 days)" and len(rows) == 80
    sla = sla_score(stored(session_rows(10, 7)), SessionThresholds(), rows, label)
    lat = [r.g2g_latency_ms for r in history if r.g2g_latency_ms is not None]
    assert sla["benchmark"] == label
    assert sla["anchors"]["g2g_latency_ms"] == [round(float(np.percentile(lat, 50)), 3),
                                               round(float(np.percentile(lat, 90)), 3)]
    assert history_baseline(tmp_path, "streamdiffusion", today=today + dt.timedelta(days=5)) is None  # 2 days left
    assert history_baseline(tmp_path, "other-model", today=today) is None
    assert sla_score(stored(session_rows(10, 7)), SessionThresholds())["benchmark"] == "thresholds"


def test_only_errors_a_retry_can_fix_are_retried():
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    from fleet.results.clickhouse import retryable

    assert retryable(OperationalError("Error HTTPConnectionPool: connection refused"))
    assert retryable(DatabaseError("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)"))
    assert retryable(DatabaseError("Code: 209. DB::NetException: Timeout exceeded while writing to socket"))
    assert not retryable(DatabaseError("Code: 516. DB::Exception: default: Authentication failed"))
    assert not retryable(DatabaseError("Code: 60. DB::Exception: Table fleet.x does not exist. (UNKNOWN_TABLE)"))
    assert not retryable(ValueError("a bug of ours is never retried"))


def test_the_clis_clickhouse_settings_come_from_the_environment_and_never_hold_the_secrets(monkeypatch):
    from fleet.settings import ClickHouseSettings

    monkeypatch.setenv("FLEET_CLICKHOUSE_DATABASE", "probes")
    monkeypatch.setenv("FLEET_CLICKHOUSE_PREFIX", "net_")
    monkeypatch.setenv("FLEET_CLICKHOUSE_URL", "http://u:s3cret@ch:8123")
    monkeypatch.setenv("FLEET_CLICKHOUSE_PASSWORD", "s3cret")
    settings = ClickHouseSettings()
    out = settings.output()
    assert (out.database, out.table_prefix, out.url_env, out.password_env) == \
        ("probes", "net_", "FLEET_CLICKHOUSE_URL", "FLEET_CLICKHOUSE_PASSWORD")
    assert (settings.output("other", "x_").database, settings.output("other", "x_").table_prefix) == ("other", "x_")
    assert "s3cret" not in repr(settings) + repr(out) + str(settings.model_dump()) + str(out.model_dump())


def test_noise_across_many_groups_is_not_a_regression_once_the_comparisons_are_corrected():
    """20 orchestrators, both sides drawn from one distribution: some groups pass a lone test by
    chance (raw p < 0.05 with the median 10 % worse), none survives the Benjamini-Hochberg correction."""
    def noise(seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [{"outcome": "ok", "error_phase": None, "orchestrator_address": f"0x{o:02d}",
                 "g2g_latency_ms": float(rng.lognormal(6, 0.5))} for o in range(20) for _ in range(8)]

    lone = flagged = 0
    for s in range(10):
        findings = compare(noise(2 * s), noise(2 * s + 1), min_sessions=5)
        lone += sum(1 for f in findings if f.why and f.p_value is not None and f.p_value < 0.05)
        flagged += sum(f.regression for f in findings)
    assert lone >= 5 and flagged == 0


def test_the_frames_a_probe_flagged_as_its_own_stalls_are_stored_with_the_session():
    """tester_stall_frames goes from the probe's result to the stored sessions column (schema 7), so a
    reader can tell how much of a session's measurements excused the tester."""
    row = runner_row(probe_result(outcome="ok", frames_received=240, tester_stall_frames=7))
    stored = tables_of([row])["sessions"].to_pylist()[0]
    assert (stored["tester_stall_frames"], stored["frames_received"]) == (7, 240)
