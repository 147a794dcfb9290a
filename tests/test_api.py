"""The dashboard's JSON API (fleet.dashboard.api) over the qualified-capacity test's dataset, whose answers
are known: every answer of every documented endpoint checked against the OpenAPI document the server
serves; the numbers against the verdict code and the hand-written statuses and gaps; every count's
``sessions_url`` lists exactly the sessions it counted; bad input is a one-line RFC 7807 problem."""

from __future__ import annotations

import datetime as dt

import httpx
import jsonschema
import pytest
from test_dashboard import NOW, truth
from test_demand import SPEC, STATUS
from test_qualified import ANONYMOUS, LATEST, MODEL, stored  # noqa: F401 - stored: the module fixture

from fleet.dashboard import queries as q
from fleet.dashboard.engine import DuckDBEngine
from fleet.dashboard.graduation import board
from fleet.dashboard.server import DashboardServer
from fleet.graduation import GraduationRules
from fleet.results.verdict import counted

RULES = GraduationRules.model_validate({"rules": [{"model": "*", "graduate": {"days": 2, "min_sessions": 3,
                                                                             "min_score": 50}}]})
# one query per documented path, the parameters it needs
CALLS = {"/v1/leaderboard": {"window": "7d"}, "/v1/sessions": {"window": "7d", "limit": 20},
         "/v1/coverage": {"window": "7d"}, "/v1/capacity/qualified": {"model": MODEL, "sla": 80},
         "/v1/capacity/qualified/series": {"model": MODEL, "window": "30d"},
         "/v1/graduation": {"model": MODEL, "days": 10}, "/v1/demand/gaps": {"model": MODEL, "sla": 80},
         "/v1/streaming/models": {"window": "7d"}, "/v1/streaming/sla": {"limit": 1000},
         "/v1/streaming/gpu-metrics": {"limit": 1000}}


@pytest.fixture(scope="module")
def api(stored):  # noqa: F811 - the fixture by name
    d, rows = stored
    srv = DashboardServer(DuckDBEngine(d), d, port=0, quiet=True, rules=RULES,
                          demand=SPEC.model_copy(update={"naap": None}), clock=lambda: NOW).start()
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client, d, rows
    srv.close()


def response_schema(doc: dict, path: str, status: str = "200", kind: str = "application/json") -> dict:
    schema = doc["paths"][path]["get"]["responses"][status]["content"][kind]["schema"]
    return {**schema, "components": doc["components"]}   # its $refs resolve against this root


def test_every_documented_endpoint_answers_as_its_openapi_document_says(api):
    client, _, _ = api
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] == "fleet results API"
    jsonschema.Draft202012Validator.check_schema(response_schema(doc, "/v1/leaderboard"))
    assert set(doc["paths"]) == set(CALLS)   # a new endpoint needs its call here
    for path, item in doc["paths"].items():
        assert set(item) == {"get"}, path    # read-only
        assert "422" not in item["get"]["responses"] and "400" in item["get"]["responses"], path
        r = client.get(path, params=CALLS[path])
        assert r.status_code == 200, (path, r.text[:300])
        body = r.json()
        jsonschema.validate(body, response_schema(doc, path), format_checker=jsonschema.FormatChecker())
        items = body if isinstance(body, list) else body["data"]
        assert items, (path, body)   # the dataset has something for every endpoint
    bad = client.get("/v1/leaderboard", params={"window": "1y"})
    jsonschema.validate(bad.json(), response_schema(doc, "/v1/leaderboard", "400", "application/problem+json"))
    # a field the document does not name fails the check: the models forbid extra fields
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "extra": 1} if isinstance(body, dict) else [{"x": 1}],
                            response_schema(doc, "/v1/streaming/gpu-metrics"))


def test_the_leaderboard_scores_as_the_verdict_code_and_every_count_lists_its_sessions(api):
    client, _, rows = api
    got = client.get("/v1/leaderboard", params={"window": "7d"}).json()
    f = q.Filters(window="7d", now=NOW)
    assert [r["rank"] for r in got["data"]] == list(range(1, len(got["data"]) + 1))
    for r in got["data"]:
        want = truth(rows, r["orchestrator"], f)
        assert r["sla_score"] == pytest.approx(want["score"], abs=0.01), r["orchestrator"]
        listed = client.get(r["sessions_url"] + "&limit=1000").json()
        assert len(listed["data"]) == r["counted_sessions"] and not listed["pagination"]["has_more"]
        since = (NOW - dt.timedelta(days=7)).timestamp()
        mine = [s for s in rows if s["orchestrator_url"] == r["orchestrator"] and s["started_unix"] >= since]
        assert r["counted_sessions"] == len(counted(mine))
        assert {s["session_id"] for s in listed["data"]} == {s["session_id"] for s in counted(mine)}
    # pages of two, concatenated, are the whole list
    pages, offset = [], 0
    for _ in range(10):
        page = client.get("/v1/leaderboard", params={"window": "7d", "limit": 2, "offset": offset}).json()
        pages += page["data"]
        offset += 2
        if not page["pagination"]["has_more"]:
            break
    assert [p["orchestrator"] for p in pages] == [r["orchestrator"] for r in got["data"]]


def test_qualified_capacity_graduation_and_gaps_give_the_known_answers(api):
    client, d, rows = api
    got = client.get("/v1/capacity/qualified", params={"model": MODEL, "sla": 80}).json()
    assert {r["orchestrator"]: r["status"] for r in got["data"] if r["orchestrator"]} == STATUS
    assert got["totals"]["slots"] == sum(LATEST.values()) + ANONYMOUS
    assert got["read_at"] == (NOW - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    gaps = {r["region"]: (r["demand_streams"], r["qualified_slots"], r["gap"], r["surplus"])
            for r in client.get("/v1/demand/gaps", params={"model": MODEL, "sla": 80}).json()["data"]}
    # by hand, as tests/test_demand.py: us-east has fast 6 + slow 2 qualified against 5 wanted
    assert gaps == {"ap-south": (4, 0, 4, 0), "eu-west": (3, 0, 3, 0), "unknown": (0, 0, 0, 0),
                    "us-east": (5, 8, 0, 3)}
    grad = client.get("/v1/graduation", params={"model": MODEL, "days": 10}).json()
    # the API carries the board as fleet.dashboard.graduation computes it (tested against hand-made days in
    # tests/test_graduation.py); here, that nothing is lost or renamed on the way, and that its links hold
    want = board(DuckDBEngine(d), RULES, MODEL, 10, NOW)
    assert [(r["orchestrator"], r["gpu"], r["state"]) for r in grad["data"]] == \
        [(r["orchestrator"], r["gpu"], r["state"]) for r in want]
    since = (NOW - dt.timedelta(days=9)).replace(hour=0, minute=0, second=0, microsecond=0)
    for pair in grad["data"]:
        for day in pair["days"]:
            listed = client.get(day["sessions_url"] + "&limit=1000").json()["data"]
            mine = [r for r in counted(rows) if r["orchestrator_url"] == pair["orchestrator"] and r["model"] == MODEL
                    and r["gpu_name"] == pair["gpu"] and r["started_unix"] >= since.timestamp()
                    and dt.datetime.fromtimestamp(r["started_unix"], dt.timezone.utc).date().isoformat() == day["day"]]
            assert len(listed) == day["counted_sessions"] == len(mine) > 0, (pair["orchestrator"], day)
            assert {s["started_at"][:10] for s in listed} == {day["day"]}


def naap_truth(rows: list[dict], start: dt.datetime, end: dt.datetime) -> dict:
    """NaaP's RULE-AGGREGATE-005 support counts per hour x orchestrator x model x GPU model, from the raw rows,
    written here apart from the SQL judged: sessions handed to an orchestrator are the denominator."""
    out: dict = {}
    for r in rows:
        if not start.timestamp() <= r["started_unix"] < end.timestamp():
            continue
        if r["outcome"] == "skipped_no_capacity" or r.get("error_phase") == "tester":
            continue
        hour = dt.datetime.fromtimestamp(r["started_unix"] // 3600 * 3600, dt.timezone.utc)
        key = (hour, r["orchestrator_url"], r["model"], r.get("gpu_name") or "?")
        t = out.setdefault(key, {"requested": 0, "started": 0, "failed": 0, "swapped": 0, "fps": []})
        t["requested"] += 1
        t["started"] += r["startup_s"] is not None
        excused = r["outcome"] == "failed" and r.get("excused")
        t["failed"] += not excused and (r["startup_s"] is None or not r.get("output_fps"))
        t["swapped"] += bool(r.get("swapped"))
        if not excused and r.get("output_fps") is not None:
            t["fps"].append(r["output_fps"])
    return out


def test_the_naap_shaped_rows_hold_naaps_rates_newest_first_over_one_pinned_window(api):
    client, _, rows = api
    end = NOW
    start = end - dt.timedelta(hours=24)
    seen, cursor = [], None
    for _ in range(100):
        # once a cursor is given, its window holds: the other parameters do not move it
        params = ({"cursor": cursor, "limit": 7, "end": (end - dt.timedelta(hours=5)).isoformat()} if cursor else
                  {"start": start.isoformat(), "end": end.isoformat(), "limit": 7})
        page = client.get("/v1/streaming/sla", params=params).json()
        assert page["meta"]["start"].startswith(start.isoformat()[:19])
        seen += page["data"]
        if not page["pagination"]["has_more"]:
            break
        cursor = page["pagination"]["next_cursor"]
    want = naap_truth(rows, start, end)
    got = {(dt.datetime.fromisoformat(r["window_start"].replace("Z", "+00:00")), r["orchestrator_uri"], r["model_id"],
            r["gpu_model_name"]): r for r in seen}
    assert len(got) == len(seen) > 7 and set(got) == set(want)
    starts = [r["window_start"] for r in seen]
    assert starts == sorted(starts, reverse=True)   # newest hour first, as NaaP
    for key, t in want.items():
        r = got[key]
        assert (r["requested_sessions"], r["startup_success_sessions"]) == (t["requested"], t["started"]), key
        assert r["effective_success_rate"] == pytest.approx(1 - t["failed"] / t["requested"]), key
        assert r["no_swap_rate"] == pytest.approx(1 - t["swapped"] / t["requested"]), key
        assert r["avg_output_fps"] == (pytest.approx(sum(t["fps"]) / len(t["fps"])) if t["fps"] else None), key
        assert r["org"] == "fleet" and r["pipeline_id"] == "live-video-to-video"
    assert any(t["failed"] for t in want.values()) and any(t["swapped"] for t in want.values())  # rates told apart
    metrics = client.get("/v1/streaming/gpu-metrics", params={"start": start.isoformat(), "end": end.isoformat(),
                                                               "limit": 1000}).json()["data"]
    assert {(r["orchestrator_uri"], r["known_sessions_count"]) for r in metrics} <= \
        {(k[1], t["requested"]) for k, t in want.items()} and metrics
    models = {m["model"]: m for m in client.get("/v1/streaming/models", params={"window": "7d"}).json()}
    assert models[MODEL]["gpu_slots"] == sum(LATEST.values()) + ANONYMOUS
    assert models[MODEL]["active_streams"] == len(LATEST)   # each orchestrator's snapshot has one in use
    assert models[MODEL]["available_capacity"] == sum(LATEST.values()) + ANONYMOUS - len(LATEST)


@pytest.mark.parametrize("path,said", [
    ("/v1/leaderboard?window=1y", "query parameter 'window': '1y' is not one of"),
    ("/v1/leaderboard?x=1", "unknown query parameter 'x' (allowed: by, category, limit, model, offset, region, window)"),
    ("/v1/leaderboard?model=a&model=b", "query parameter 'model' given more than once"),
    ("/v1/leaderboard?limit=0", "query parameter 'limit': Input should be greater than or equal to 1"),
    ("/v1/leaderboard?limit=5000", "query parameter 'limit': Input should be less than or equal to 1000"),
    ("/v1/sessions?day=2026-13-01", "query parameter 'day': "),
    ("/v1/sessions?day=1700000000", "query parameter 'day': not a UTC day (YYYY-MM-DD)"),
    ("/v1/capacity/qualified", "query parameter 'model' is required"),
    ("/v1/capacity/qualified?model=%3Cscript%3E", "query parameter 'model': not an allowed value"),
    ("/v1/streaming/sla?cursor=bm9wZQ", "query parameter 'cursor': not a cursor this API gave"),
    ("/v1/streaming/sla?start=2026-11-20T00:00:00Z&end=2026-11-19T00:00:00Z", "'start': must be before 'end'"),
    ("/v1/streaming/sla?start=2026-01-01T00:00:00Z&end=2026-11-19T00:00:00Z", "at most 31 days apart"),
    ("/v1/streaming/sla?end=0001-01-01T00:00:00Z", "query parameter 'end': between 2000 and 2999 only"),
    ("/v1/streaming/sla?start=0001-01-01T00:00:00%2B14:00", "query parameter 'start': between 2000 and 2999 only"),
    ("/v1/sessions?day=9999-12-31", "query parameter 'day': "),
])
def test_a_bad_request_is_a_one_line_problem(api, path, said):
    client, _, _ = api
    r = client.get(path)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", (r.status_code, r.text)
    body = r.json()
    assert (body["status"], body["title"]) == (400, "Bad Request") and said in body["detail"], body
    assert "\n" not in body["detail"] and "Traceback" not in r.text and "<script" not in r.text


def test_read_only_head_not_found_and_the_strict_headers(api):
    client, _, _ = api
    head = client.head("/v1/leaderboard")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    post = client.post("/v1/leaderboard")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD" and post.json()["status"] == 405
    missing = client.get("/v1/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    for path in ("/v1/leaderboard", "/openapi.json", "/", "/nope"):
        h = client.get(path).headers
        assert "default-src 'none'" in h["content-security-policy"] and h["x-content-type-options"] == "nosniff"
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404   # they need scripts


class BrokenEngine:
    """A fake engine whose every query fails, as a lost database would: the server's own error path."""

    def __init__(self, real: DuckDBEngine) -> None:
        self.dialect, self.tables = real.dialect, real.tables

    def query(self, sql: str, params: dict) -> list[dict]:
        raise RuntimeError("the database went away")


def test_an_error_of_our_own_is_a_one_line_500_and_one_log_line(stored, capfd):  # noqa: F811
    d, _ = stored
    srv = DashboardServer(BrokenEngine(DuckDBEngine(d)), d, port=0, quiet=True).start()
    try:
        for path in ("/v1/leaderboard", "/workflows"):
            r = httpx.get(srv.url + path, timeout=30)
            assert (r.status_code, r.text) == (500, "internal error (see the server log)\n"), path
            assert "default-src 'none'" in r.headers["content-security-policy"]
    finally:
        srv.close()
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and all("RuntimeError: the database went away" in line for line in lines), err
    assert "Traceback" not in err


def test_fleet_dashboard_serves_the_api_and_ends_cleanly_on_sigterm(stored):  # noqa: F811
    """The command itself, as a user runs it: it prints where it listens, answers, and SIGTERM ends it with 0."""
    import signal
    import subprocess
    import sys
    import time

    d, _ = stored
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "dashboard", "--results", str(d), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()   # its first line, printed once the socket is bound
        assert line.startswith("fleet: dashboard at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].split("/,", 1)[0]
        deadline = time.monotonic() + 30
        while True:   # the socket listens at once; uvicorn accepts once it has started
            try:
                r = httpx.get(url + "/v1/streaming/models?window=all", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no answer within 30 s"
        assert r.status_code == 200 and {m["model"] for m in r.json()} >= {MODEL}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_counts_under_a_region_filter_link_to_the_sessions_they_counted(api):
    """Qualified capacity judges every session of the model whatever the region: its links say so too."""
    client, _, _ = api
    got = client.get("/v1/capacity/qualified", params={"model": MODEL, "sla": 80, "region": "local"}).json()
    named = [r for r in got["data"] if r["orchestrator"] and r["counted_sessions"]]
    assert named
    for r in named:
        assert "region=" not in r["sessions_url"]
        listed = client.get(r["sessions_url"] + "&limit=1000").json()["data"]
        assert len(listed) == r["counted_sessions"], r
    coverage = client.get("/v1/coverage", params={"window": "7d"}).json()["data"]
    for r in coverage:
        listed = client.get(r["sessions_url"] + "&limit=1000").json()["data"]
        assert len(listed) == r["tested_sessions"], r


def test_demand_without_a_file_is_a_404_and_an_unreadable_naap_a_502(stored):  # noqa: F811
    d, _ = stored
    none = DashboardServer(DuckDBEngine(d), d, port=0, quiet=True, clock=lambda: NOW).start()
    naap = DashboardServer(DuckDBEngine(d), d, port=0, quiet=True, clock=lambda: NOW, demand=SPEC).start()  # unset var
    try:
        r = httpx.get(none.url + "/v1/demand/gaps", params={"model": MODEL}, timeout=30)
        assert r.status_code == 404 and r.json()["detail"].startswith("no demand declared: start the dashboard with "
                                                                      "--demand FILE")
        r = httpx.get(naap.url + "/v1/demand/gaps", params={"model": MODEL}, timeout=30)
        assert (r.status_code, r.json()["title"]) == (502, "Bad Gateway") and "FAKE_NAAP_URL is not set" in r.text
        page = httpx.get(naap.url + "/demand", params={"model": MODEL}, timeout=30)   # the page says why, and goes on
        assert page.status_code == 200 and "NaaP could not be read, so the file&#39;s demand is shown" in page.text
    finally:
        none.close()
        naap.close()
