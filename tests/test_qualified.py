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
from fleet.dashboard.qualified import qualified_capacity
from fleet.errors import InputError
from fleet.results.capacity_series import capacity_table
from fleet.results.clickhouse import push_campaign
from fleet.results.sink import Batch, ParquetSink
from fleet.results.verdict import counted

MODEL = "streamdiffusion"
NEW = "https://new.test:8935"       # 3 sessions: unproven
IDLE = "https://idle.test:8935"     # slots on two GPU models, no session at all
GPUS = {**{o: g for o, (g, _, _) in ORCHS.items()}, NEW: "NVIDIA GeForce RTX 4090"}
# the slots each orchestrator offers in the last snapshot of the window (earlier ones differ)
LATEST = {"https://fast.test:8935": 6, "https://slow.test:8935": 2, "https://flaky.test:8935": 3,
          "https://weak.test:8935": 2, NEW: 1, IDLE: 2}
ANONYMOUS = 5


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
             snapshot(NOW - dt.timedelta(minutes=10), {"https://fast.test:8935": 9}, model="comfyui")]
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
    for g in got["by_gpu"]:   # per GPU model: the slots of the orchestrators whose GPUs are that model
        uris = [u for u in LATEST if (GPUS.get(u) if u != IDLE else "mixed") == g["gpu"]]
        assert g["slots"] == sum(LATEST[u] for u in uris) + (ANONYMOUS if g["gpu"] == "unknown" else 0), g
    assert got["read_unix"] == pytest.approx((NOW - dt.timedelta(hours=1)).timestamp())


def test_qualified_capacity_on_duckdb_matches_the_verdict_code(stored):
    d, rows = stored
    check(DuckDBEngine(d), rows)


def test_qualified_capacity_needs_a_model(stored):
    with pytest.raises(InputError, match="per workflow: give a model"):
        qualified_capacity(DuckDBEngine(stored[0]), q.Filters(window="7d", now=NOW))


@pytest.mark.slow
def test_qualified_capacity_on_clickhouse_gives_the_same_answers(stored, clickhouse_db):
    d, rows = stored
    push_campaign(d / "campaign=camp-q", clickhouse_db)
    check(ClickHouseEngine(clickhouse_db), rows)


def test_the_capacity_view_shows_the_qualified_slots_with_links_to_each_orchestrator(stored):
    from fleet.dashboard.pages import capacity_page

    d, rows = stored
    engine = DuckDBEngine(d)
    page = capacity_page(engine, q.Filters(window="7d", model=MODEL, now=NOW), {}, [])
    section = page[page.index("<h2>SLA-qualified capacity</h2>"):]
    want = [status for status, _, _ in expected(rows, 95.0, 10).values()] + ["unproven"]   # NaaP's target; + anonymous
    for status in ("qualified", "failing", "unproven"):
        assert section.count(f">{status}<") == want.count(status), (status, want)
    assert "/orchestrator?window=7d&amp;model=streamdiffusion&amp;id=https%3A%2F%2Ffast.test%3A8935" in section
    assert "Choose a model" in capacity_page(engine, q.Filters(window="7d", now=NOW), {}, [])
