"""SLA-qualified capacity (fleet.dashboard.qualified) on a dataset with known answers: the dashboard
test's four orchestrators of known quality, a new one with too few sessions, one with slots and no
session, slots of no known orchestrator, and capacity that changes over the window. The expected
statuses come from the campaign verdict's own scoring code (fleet.results.verdict), not the SQL judged;
the same answers on DuckDB and on ClickHouse."""

from __future__ import annotations

import datetime as dt

import pytest
from test_dashboard import NOW, ORCHS, as_row, dataset, truth

from fleet.capacity import CapacitySnapshot, OrchestratorSlots
from fleet.dashboard import queries as q
from fleet.dashboard.engine import ClickHouseEngine, DuckDBEngine
from fleet.dashboard.network import models
from fleet.dashboard.qualified import qualified_capacity, qualified_series
from fleet.errors import InputError
from fleet.results.capacity_series import capacity_table
from fleet.results.clickhouse import push_campaign
from fleet.results.sink import Batch, ParquetSink
from fleet.results.verdict import counted, sla_score
from fleet.scenario import SessionThresholds

MODEL = "streamdiffusion"
NEW = "https://new.test:8935"       # 3 sessions: unproven
IDLE = "https://idle.test:8935"     # slots on two GPU models, no session at all
GPUS = {**{o: g for o, (g, _, _) in ORCHS.items()}, NEW: "NVIDIA GeForce RTX 4090"}
# the slots each orchestrator offers in the last snapshot of the window (earlier ones differ)
LATEST = {"https://fast.test:8935": 6, "https://slow.test:8935": 2, "https://flaky.test:8935": 3,
          "https://weak.test:8935": 2, NEW: 1, IDLE: 2}
ANONYMOUS = 5


# a scenario's static count read after the network's snapshot: what it assumed, not the network's slots
STATIC_LATER = CapacitySnapshot(model=MODEL, source="static", read_unix=(NOW - dt.timedelta(minutes=5)).timestamp(),
                                anonymous_idle=40)
STATIC_ONLY = CapacitySnapshot(model="static-only", source="static", anonymous_idle=7, anonymous_in_use=1,
                               read_unix=(NOW - dt.timedelta(minutes=20)).timestamp())   # a model with nothing else


def orch(uri: str, slots: int) -> OrchestratorSlots:
    names = ("NVIDIA GeForce RTX 4090", "NVIDIA L40S") if uri == IDLE else (GPUS[uri],) * 2
    return OrchestratorSlots(f"0x{abs(hash(uri)) % 10**8:040x}", uri, idle=slots - 1, in_use=1,
                             gpus=tuple((f"g{i}", n) for i, n in enumerate(names)))


def snapshot(at: dt.datetime, slots: dict[str, int], model: str = MODEL, anonymous: int = 0) -> CapacitySnapshot:
    return CapacitySnapshot(model=model, source="gateway", read_unix=at.timestamp(), anonymous_idle=anonymous,
                            orchestrators=tuple(orch(u, n) for u, n in slots.items()))


def sessions() -> list[dict]:
    rows = dataset()
    for i in range(3):   # a new orchestrator, good, but only three sessions
        rows.append({**rows[0], "session_id": f"new{i}", "orchestrator_url": NEW, "target_orchestrator": NEW,
                     "orchestrator_address": "0xnew", "gpu_name": GPUS[NEW], "model": MODEL, "outcome": "ok",
                     "started_unix": (NOW - dt.timedelta(hours=2 + i)).timestamp()})
    return rows


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    d = tmp_path_factory.mktemp("qualified")
    rows = sessions()
    sink = ParquetSink(d, "camp-q", {"scenario": "qualified"})
    sink.write([as_row({**r, "campaign_id": "camp-q", "run_id": "camp-q"}) for r in rows])
    ids = {"campaign_id": "camp-q", "run_id": "camp-q", "scenario": "qualified"}
    reads = [snapshot(NOW - dt.timedelta(days=8), {"https://fast.test:8935": 10}),          # before the window
             snapshot(NOW - dt.timedelta(days=3), {**LATEST, "https://fast.test:8935": 4}),  # fast grew since
             snapshot(NOW - dt.timedelta(hours=1), LATEST, anonymous=ANONYMOUS),
             snapshot(NOW - dt.timedelta(minutes=10), {"https://fast.test:8935": 9}, model="comfyui"),
             STATIC_LATER, STATIC_ONLY]
    for r in reads:
        sink.add(Batch(sink.seq + 1, (), {"capacity": capacity_table(r, ids, r.read_unix or 0.0)}))
    return d, rows


def expected(rows: list[dict], sla: float, min_sessions: int) -> dict:
    """Each orchestrator's status from the verdict code: its sessions on the model in the window."""
    f = q.Filters(window="7d", model=MODEL, now=NOW)
    since = (NOW - dt.timedelta(days=7)).timestamp()
    out = {}
    for uri in LATEST:
        mine = [r for r in rows if r["orchestrator_url"] == uri and r["model"] == MODEL and r["started_unix"] >= since]
        n = len(counted(mine))
        score = truth(rows, uri, f)["score"] if n else None
        out[uri] = ("unproven" if n < min_sessions or score is None else "qualified" if score >= sla else "failing",
                    n, score)
    return out


def check(engine, rows: list[dict]) -> None:
    f = q.Filters(window="7d", model=MODEL, now=NOW)
    scores = sorted(s for u, (_, _, s) in expected(rows, 0, 10).items() if u in ORCHS)
    sla = (scores[1] + scores[2]) / 2   # between the four known orchestrators' scores: two pass, two fail
    want = expected(rows, sla, 10)
    got = qualified_capacity(engine, f, sla=sla, min_sessions=10)
    by_uri = {r["orchestrator"]: r for r in got["orchestrators"]}
    assert set(by_uri) == set(LATEST) | {None}
    for uri, (status, n, score) in want.items():
        r = by_uri[uri]
        assert (r["status"], r["counted"], r["slots"]) == (status, n, LATEST[uri]), (uri, r, want[uri])
        assert r["score"] == (pytest.approx(score, abs=0.01) if score is not None else None)
    assert [s for s, _, _ in want.values()].count("qualified") == 2 and want[NEW][0] == "unproven"
    assert by_uri[IDLE]["gpu"] == "mixed" and by_uri[None]["gpu"] == "unknown"
    assert (by_uri[None]["status"], by_uri[None]["slots"]) == ("unproven", ANONYMOUS)
    totals = {s: sum(LATEST[u] for u, (st, _, _) in want.items() if st == s) for s in ("qualified", "failing")}
    unproven = sum(LATEST[u] for u, (st, _, _) in want.items() if st == "unproven") + ANONYMOUS
    assert got["totals"] == {"qualified_slots": totals["qualified"], "failing_slots": totals["failing"],
                             "unproven_slots": unproven, "slots": sum(LATEST.values()) + ANONYMOUS}
    assert {g["gpu"] for g in got["by_gpu"]} == {GPUS.get(u) if u != IDLE else "mixed" for u in LATEST} | {"unknown"}
    for g in got["by_gpu"]:   # per GPU model: the slots of the orchestrators whose GPUs are that model
        uris = [u for u in LATEST if (GPUS.get(u) if u != IDLE else "mixed") == g["gpu"]]
        assert g["slots"] == sum(LATEST[u] for u in uris) + (ANONYMOUS if g["gpu"] == "unknown" else 0), g
    assert got["read_unix"] == pytest.approx((NOW - dt.timedelta(hours=1)).timestamp())


def check_static_counts(engine) -> None:
    """A model whose only snapshot is a static count: that count (``check`` shows a later one is not taken over
    the network's read), in the qualified view and the network's per-model slots."""
    f = q.Filters(window="7d", model="static-only", now=NOW)
    got = qualified_capacity(engine, f)
    assert [(r["orchestrator"], r["slots"], r["status"]) for r in got["orchestrators"]] == [(None, 8, "unproven")]
    assert got["read_unix"] == pytest.approx(STATIC_ONLY.read_unix)
    per_model = {r["model"]: (r["gpu_slots"], r["active_streams"]) for r in models(engine, "7d", NOW)}
    assert per_model[MODEL] == (sum(LATEST.values()) + ANONYMOUS, len(LATEST))   # the network's read (1 in use each)
    assert per_model["static-only"] == (8, 1)


def test_qualified_capacity_on_duckdb_matches_the_verdict_code(stored):
    d, rows = stored
    check(DuckDBEngine(d), rows)
    check_static_counts(DuckDBEngine(d))


def test_qualified_capacity_needs_a_model(stored):
    with pytest.raises(InputError, match="per workflow: give a model"):
        qualified_capacity(DuckDBEngine(stored[0]), q.Filters(window="7d", now=NOW))


@pytest.mark.slow
def test_qualified_capacity_on_clickhouse_gives_the_same_answers(stored, clickhouse_db):
    d, rows = stored
    push_campaign(d / "campaign=camp-q", clickhouse_db)
    check(ClickHouseEngine(clickhouse_db), rows)
    check_static_counts(ClickHouseEngine(clickhouse_db))


def test_the_capacity_view_shows_the_qualified_slots_with_links_to_each_orchestrator(stored):
    from fleet.dashboard.pages import capacity_page

    d, rows = stored
    engine = DuckDBEngine(d)
    page = capacity_page(engine, q.Filters(window="7d", model=MODEL, now=NOW), {}, [])
    section = page[page.index("<h2>SLA-qualified capacity</h2>"):]
    section = section.split("SLA-qualified capacity over time")[0]   # the snapshot's tables, not the series' chart
    want = [status for status, _, _ in expected(rows, 95.0, 10).values()] + ["unproven"]   # NaaP's target; + anonymous
    for status in ("qualified", "failing", "unproven"):
        assert section.count(f">{status}<") == want.count(status), (status, want)
    assert "/orchestrator?window=7d&amp;model=streamdiffusion&amp;id=https%3A%2F%2Ffast.test%3A8935" in section
    assert "Choose a model" in capacity_page(engine, q.Filters(window="7d", now=NOW), {}, [])


# SLA-qualified capacity over time (qualified_series): a dataset of its own, where capacity changes from day to day
# and orchestrators change quality from one day to the next. Day buckets for a 7-day window, hour buckets for 24h.
SERIES = "series-model"
A, B, C, D = "https://a.test:8935", "https://b.test:8935", "https://c.test:8935", "https://d.test:8935"
G4090, L40S = "NVIDIA GeForce RTX 4090", "NVIDIA L40S"
DAY = dt.datetime(2026, 11, 17, tzinfo=dt.timezone.utc)   # NOW is 2026-11-20 12:00: the 7d window starts on the 13th
GOOD, BAD = (1.0, 50.0, 30.0), (6.0, 300.0, 8.0)          # startup_s, g2g_latency_ms, output_fps
# (orchestrator, GPU, day offset from DAY, sessions, quality): A good on the 17th (its 4090; its few L40S sessions
# are bad and are not its 4090's), bad on the 18th; B the other way round; C (GPUs of two models) good on both of
# its GPUs on the 17th; D only three sessions; sessions on the 19th, a day with no snapshot.
PLAN = [(A, G4090, 0, 12, GOOD), (A, L40S, 0, 4, BAD), (B, L40S, 0, 12, BAD), (C, G4090, 0, 6, GOOD),
        (C, L40S, 0, 6, GOOD), (A, G4090, 1, 12, BAD), (B, L40S, 1, 12, GOOD), (D, G4090, 1, 3, GOOD),
        (A, G4090, 2, 12, GOOD), (B, L40S, 2, 12, GOOD)]


def series_sessions() -> list[dict]:
    rows = []
    for orch_uri, gpu, day, n, (startup, latency, fps) in PLAN:
        for i in range(n):
            row = {"campaign_id": "camp-s", "run_id": "camp-s", "scenario": "series",
                   "session_id": f"{orch_uri[8]}{gpu[-4:]}{day}-{i}", "region": "local", "orchestrator_url": orch_uri,
                   "target_orchestrator": orch_uri, "orchestrator_address": f"0x{orch_uri[8]}", "gpu_name": gpu,
                   "gpu_id": f"GPU-{gpu[-4:]}", "model": SERIES, "prompt_category": "portraits",
                   "started_unix": (DAY + dt.timedelta(days=day, hours=1 + i)).timestamp(), "duration_s": 20.0,
                   "outcome": "ok", "excused": False, "startup_s": startup + i * 0.05,
                   "g2g_latency_ms": latency + i, "output_fps": fps - i * 0.1, "swapped": False}
            if (startup, latency, fps) == BAD and i % 3 == 0:   # a bad one fails a third of its sessions
                row.update(outcome="failed", error_phase="pipeline", error_class="gateway_error", startup_s=None,
                           g2g_latency_ms=None, output_fps=None)
            rows.append(row)
    return rows


def series_orch(uri: str, slots: int) -> OrchestratorSlots:
    names = (G4090, L40S) if uri == C else (G4090,) * 2 if uri in (A, D) else (L40S,)
    return OrchestratorSlots(f"0x{uri[8]}", uri, idle=slots - 1, in_use=1, gpus=tuple((f"g{i}", n) for i, n in
                                                                                       enumerate(names)))


def series_snapshot(at: dt.datetime, slots: dict[str, int], anonymous: int = 0, model: str = SERIES) -> CapacitySnapshot:
    return CapacitySnapshot(model=model, source="gateway", read_unix=at.timestamp(), anonymous_idle=anonymous,
                            orchestrators=tuple(series_orch(u, n) for u, n in slots.items()))


READS = [series_snapshot(DAY - dt.timedelta(days=5), {A: 10}),                        # the 12th: before a 7d window
         series_snapshot(DAY + dt.timedelta(hours=8), {A: 4, B: 2, C: 3}, anonymous=1),
         series_snapshot(DAY + dt.timedelta(hours=20), {A: 5, B: 2, C: 3}, anonymous=1),  # the 17th's last
         CapacitySnapshot(model=SERIES, source="static", read_unix=(DAY + dt.timedelta(hours=22)).timestamp(),
                          anonymous_idle=40),                                         # ... a static count after it
         series_snapshot(DAY + dt.timedelta(days=1, hours=10), {A: 6, B: 3, D: 1}),
         series_snapshot(DAY + dt.timedelta(days=1, hours=11), {A: 9}, model="other"),    # another model's
         series_snapshot(NOW - dt.timedelta(minutes=105), {A: 1, B: 1}),                  # the 20th, 10:15
         series_snapshot(NOW - dt.timedelta(minutes=60), {A: 2, B: 3}, anonymous=4)]      # the 20th's last, 11:00


def write_series(d, rows: list[dict], reads: list[CapacitySnapshot]) -> None:
    sink = ParquetSink(d, "camp-s", {"scenario": "series"})
    sink.write([as_row(r) for r in rows])
    ids = {"campaign_id": "camp-s", "run_id": "camp-s", "scenario": "series"}
    for r in reads:
        sink.add(Batch(sink.seq + 1, (), {"capacity": capacity_table(r, ids, r.read_unix or 0.0)}))


@pytest.fixture(scope="module")
def series_stored(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    rows = series_sessions()
    write_series(d, rows, READS)
    return d, rows


def day_truth(rows: list[dict], day: int, orch_uri: str, gpu: str | None) -> tuple[int, float | None]:
    """One orchestrator's (x GPU's, unless None) counted sessions and score on a day, from the verdict code
    with that day's sessions on the model as the network's baseline."""
    start = (DAY + dt.timedelta(days=day)).timestamp()
    window = [r for r in rows if start <= r["started_unix"] < start + 86400]
    mine = [r for r in window if r["orchestrator_url"] == orch_uri and (gpu is None or r["gpu_name"] == gpu)]
    return len(counted(mine)), sla_score(mine, SessionThresholds(), baseline=counted(window))["score"] if mine else None


# the expected statuses and slots per day bucket, written by hand: (orchestrator, GPU, slots, status, truth's GPU)
WANT_DAYS = {
    0: [(None, "unknown", 1, "unproven", None), (A, G4090, 5, "qualified", G4090), (B, L40S, 2, "failing", L40S),
        (C, "mixed", 3, "qualified", None)],
    1: [(A, G4090, 6, "failing", G4090), (B, L40S, 3, "qualified", L40S), (D, G4090, 1, "unproven", G4090)],
    3: [(None, "unknown", 4, "unproven", None), (A, G4090, 2, "unproven", G4090), (B, L40S, 3, "unproven", L40S)],
}
WANT_TOTALS = {0: {"qualified_slots": 8, "failing_slots": 2, "unproven_slots": 1, "slots": 11},
               1: {"qualified_slots": 3, "failing_slots": 6, "unproven_slots": 1, "slots": 10},
               3: {"qualified_slots": 0, "failing_slots": 0, "unproven_slots": 9, "slots": 9}}
SERIES_SLA = 80.0


def check_series(engine, rows: list[dict]) -> None:
    goods = [day_truth(rows, 0, A, G4090)[1], day_truth(rows, 0, C, None)[1], day_truth(rows, 1, B, L40S)[1]]
    bads = [day_truth(rows, 0, B, L40S)[1], day_truth(rows, 1, A, G4090)[1]]
    assert min(goods) >= SERIES_SLA + 5 and max(bads) <= SERIES_SLA - 5, (goods, bads)   # the hand statuses hold
    got = qualified_series(engine, q.Filters(window="7d", model=SERIES, now=NOW), sla=SERIES_SLA, min_sessions=10)
    assert (got["model"], got["window"], got["unit"], got["sla"], got["min_sessions"]) == (
        SERIES, "7d", "day", SERIES_SLA, 10)
    days = [(DAY + dt.timedelta(days=k)).timestamp() for k in WANT_DAYS]   # the 19th: no snapshot, no bucket
    assert [b["t_unix"] for b in got["buckets"]] == days
    assert [b["read_unix"] for b in got["buckets"]] == [
        (DAY + dt.timedelta(hours=20)).timestamp(), (DAY + dt.timedelta(days=1, hours=10)).timestamp(),
        (NOW - dt.timedelta(minutes=60)).timestamp()]
    for bucket, (k, want) in zip(got["buckets"], WANT_DAYS.items()):
        orchs = sorted(bucket["orchestrators"], key=lambda r: r["orchestrator"] or "")
        assert [(r["orchestrator"], r["gpu"], r["slots"], r["status"]) for r in orchs] == [w[:4] for w in want], k
        for r, (uri, _, _, _, gpu) in zip(orchs, want):
            n, score = day_truth(rows, k, uri, gpu) if uri else (0, None)
            assert r["counted"] == n, (k, uri)
            assert r["score"] == (pytest.approx(score, abs=0.01) if score is not None else None), (k, uri)
        assert bucket["totals"] == WANT_TOTALS[k], k
        by_gpu = {g["gpu"]: g for g in bucket["by_gpu"]}
        for g in by_gpu.values():
            assert g["slots"] == sum(g[f"{s}_slots"] for s in ("qualified", "failing", "unproven"))
        assert {gpu: sum(w[2] for w in want if w[1] == gpu) for gpu in by_gpu} == {
            gpu: g["slots"] for gpu, g in by_gpu.items()} and len(by_gpu) == len({w[1] for w in want})
    day0 = {g["gpu"]: g for g in got["buckets"][0]["by_gpu"]}
    assert (day0[G4090]["qualified_slots"], day0[L40S]["failing_slots"], day0["mixed"]["qualified_slots"]) == (5, 2, 3)
    hours = qualified_series(engine, q.Filters(window="24h", model=SERIES, now=NOW), sla=SERIES_SLA, min_sessions=10)
    assert hours["unit"] == "hour"
    assert [(b["t_unix"], b["totals"]["slots"]) for b in hours["buckets"]] == [
        ((NOW - dt.timedelta(hours=2)).timestamp(), 2), ((NOW - dt.timedelta(hours=1)).timestamp(), 9)]
    everything = qualified_series(engine, q.Filters(window="all", model=SERIES, now=NOW), sla=SERIES_SLA)
    assert [b["t_unix"] for b in everything["buckets"]] == [(DAY - dt.timedelta(days=5)).timestamp(), *days]
    assert everything["buckets"][0]["totals"] == {"qualified_slots": 0, "failing_slots": 0, "unproven_slots": 10,
                                                  "slots": 10}


def test_qualified_series_on_duckdb_judges_each_day_on_its_own_sessions(series_stored):
    d, rows = series_stored
    check_series(DuckDBEngine(d), rows)


@pytest.mark.slow
def test_qualified_series_on_clickhouse_gives_the_same_answers(series_stored, clickhouse_db):
    d, rows = series_stored
    push_campaign(d / "campaign=camp-s", clickhouse_db)
    check_series(ClickHouseEngine(clickhouse_db), rows)


def test_qualified_series_needs_a_model(series_stored):
    with pytest.raises(InputError, match="per workflow: give a model"):
        qualified_series(DuckDBEngine(series_stored[0]), q.Filters(window="7d", now=NOW))


class Counting:
    """An engine that counts the queries it is asked."""

    def __init__(self, engine) -> None:
        self.engine, self.dialect, self.queries = engine, engine.dialect, 0

    def tables(self):
        return self.engine.tables()

    def query(self, sql, params):
        self.queries += 1
        return self.engine.query(sql, params)


def test_qualified_series_asks_a_bounded_number_of_queries_whatever_the_number_of_buckets(series_stored, tmp_path):
    """Thirty days of snapshots and sessions ask no more queries than three days of them."""
    month = [series_snapshot(NOW - dt.timedelta(days=k, hours=1), {A: 1 + k % 4, C: 2}) for k in range(30)]
    rows = [{**r, "session_id": f"{r['session_id']}-{k}", "started_unix": r["started_unix"] - k * 86400}
            for r in series_sessions()[:12] for k in range(0, 30, 3)]
    write_series(tmp_path, rows, month)
    counts = {}
    for name, d, window in (("few", series_stored[0], "7d"), ("month", tmp_path, "30d")):
        engine = Counting(DuckDBEngine(d))
        got = qualified_series(engine, q.Filters(window=window, model=SERIES, now=NOW), sla=SERIES_SLA)
        counts[name] = (len(got["buckets"]), engine.queries)
    assert counts["month"][0] == 30 and counts["few"][0] == 3
    assert counts["month"][1] == counts["few"][1] == 3, counts   # the snapshots, the scores by GPU, by orchestrator
