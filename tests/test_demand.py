"""Demand gaps (fleet.demand, fleet.dashboard.demand) on the qualified-capacity test's dataset, whose answers
are known: at an SLA of 80, fast (6 slots, RTX 4090) and slow (2, L40S) qualify, flaky (3, L40S) and weak
(2, A10) fail, new (1, RTX 4090) and idle (2, mixed GPUs) are unproven, and 5 slots belong to no known
orchestrator. The gaps below are written by hand from that; the same answers on DuckDB and on ClickHouse.
NaaP's demand comes from a fake NaaP on loopback (named so: the hosted API cannot exist on this machine)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import urllib.parse

import pytest
from test_dashboard import NOW
from test_qualified import ANONYMOUS, IDLE, LATEST, MODEL, NEW, expected, stored  # noqa: F401 - stored: fixture

from fleet.dashboard import queries as q
from fleet.dashboard.demand import demand_gaps, naap_rows_for
from fleet.dashboard.engine import ClickHouseEngine, DuckDBEngine
from fleet.demand import DemandSpec, NaapDemandRow, RegionDemand, demand_for, load_demand, read_naap_demand, region_of
from fleet.errors import CapacityError, InputError
from fleet.results.clickhouse import push_campaign

SLA = 80.0
FAST, SLOW, FLAKY, WEAK = "https://fast.test:8935", "https://slow.test:8935", "https://flaky.test:8935", \
    "https://weak.test:8935"
# the statuses at SLA 80, by hand (the guard below checks them against the verdict code)
STATUS = {FAST: "qualified", SLOW: "qualified", FLAKY: "failing", WEAK: "failing", NEW: "unproven", IDLE: "unproven"}
SPEC = DemandSpec.model_validate({
    "demand": [{"model": MODEL, "regions": {"us-east": 5, "eu-west": 3, "ap-south": 4}},
               {"model": "comfyui", "regions": {"us-east": 1}}],
    "regions": [{"match": "https://fast.test:*", "region": "us-east"},
                {"match": "https://[fw]*.test:*", "region": "eu-west"},   # fast too, but the first rule wins
                {"match": "https://slow.test:*", "region": "us-east"},
                {"match": "https://new.test:8935", "region": "us-east"}],
    "naap": {"url_env": "FAKE_NAAP_URL", "gateways": {"gw-a": "us-east", "gw-b": "us-east", "gw-c": "eu-west"}}})


def test_the_hand_written_statuses_are_the_verdict_codes(stored):  # noqa: F811
    _, rows = stored
    assert {u: s for u, (s, _, _) in expected(rows, SLA, 10).items()} == STATUS


def test_orchestrators_are_placed_by_the_first_matching_rule_else_unknown():
    assert [region_of(SPEC, u) for u in (FAST, SLOW, FLAKY, WEAK, NEW, IDLE, None)] == \
        ["us-east", "us-east", "eu-west", "eu-west", "us-east", "unknown", "unknown"]


def check(engine) -> None:
    got = demand_gaps(engine, q.Filters(window="7d", model=MODEL, now=NOW), SPEC, sla=SLA, min_sessions=10)
    assert (got["model"], got["demand_source"], got["sla"]) == (MODEL, "file", SLA)
    slim = {r["region"]: (r["demand_streams"], r["qualified_slots"], r["failing_slots"], r["unproven_slots"],
                          r["slots"], r["gap"], r["surplus"], r["qualified_by_gpu"]) for r in got["regions"]}
    assert slim == {
        # region     demand qualified failing unproven slots gap surplus
        "ap-south": (4, 0, 0, 0, 0, 4, 0, {}),                                             # demand, no slot
        "eu-west": (3, 0, 5, 0, 5, 3, 0, {}),                                              # flaky 3 + weak 2 fail
        "unknown": (0, 0, 0, 2 + ANONYMOUS, 2 + ANONYMOUS, 0, 0, {}),                      # slots, no demand
        "us-east": (5, 8, 0, 1, 9, 0, 3, {"NVIDIA GeForce RTX 4090": 6, "NVIDIA L40S": 2}),  # fast + slow; new
    }
    assert [r["region"] for r in got["regions"]] == ["ap-south", "eu-west", "unknown", "us-east"]
    assert all(r["unmet_requests"] is None and r["peak_hour"] is None for r in got["regions"])
    pairs = {(p["region"], p["gpu"]): (p["qualified_slots"], p["failing_slots"], p["unproven_slots"])
             for p in got["by_gpu"]}
    assert pairs == {("eu-west", "NVIDIA A10"): (0, 2, 0), ("eu-west", "NVIDIA L40S"): (0, 3, 0),
                     ("unknown", "mixed"): (0, 0, 2), ("unknown", "unknown"): (0, 0, ANONYMOUS),
                     ("us-east", "NVIDIA GeForce RTX 4090"): (6, 0, 1), ("us-east", "NVIDIA L40S"): (2, 0, 0)}
    assert got["totals"] == {"demand_streams": 12, "gap": 7, "surplus": 3, "slots": 21, "qualified_slots": 8,
                             "failing_slots": 5, "unproven_slots": 8}
    assert got["totals"]["slots"] == sum(LATEST.values()) + ANONYMOUS


def test_demand_gaps_on_duckdb(stored):  # noqa: F811
    check(DuckDBEngine(stored[0]))


@pytest.mark.slow
def test_demand_gaps_on_clickhouse_give_the_same_answers(stored, clickhouse_db):  # noqa: F811
    d, _ = stored
    push_campaign(d / "campaign=camp-q", clickhouse_db)
    check(ClickHouseEngine(clickhouse_db))


def test_a_model_no_source_names_has_no_demand_and_every_slot_in_surplus_or_unproven(stored):  # noqa: F811
    spec = DemandSpec.model_validate({"regions": [{"match": "https://*", "region": "eu-west"}]})
    got = demand_gaps(DuckDBEngine(stored[0]), q.Filters(window="7d", model=MODEL, now=NOW), spec, sla=SLA)
    assert got["demand_source"] == "none"
    assert {r["region"]: (r["demand_streams"], r["qualified_slots"], r["surplus"]) for r in got["regions"]} == \
        {"eu-west": (0, 8, 8), "unknown": (0, 0, 0)}   # every known orchestrator matches; the anonymous slots do not


# -- the demand file ------------------------------------------------------------------------------------------

def test_the_shipped_example_loads_and_its_schema_is_printed(cli):
    spec = load_demand("scenarios/rules/demand.yaml")
    assert {d.model for d in spec.demand} == {"streamdiffusion", "streamdiffusion-sdxl"}
    assert region_of(spec, "https://orch-1.reference.local:8935") == "us-east"
    assert spec.naap is None   # the example works offline: NaaP is commented out
    out = cli("schema", "demand")
    schema = json.loads(out.out)
    assert out.code == 0 and schema["title"] == "fleet demand"
    assert set(schema["properties"]) == {"demand", "regions", "naap"}


@pytest.mark.parametrize("text,message", [
    ("demand:\n  - model: sd\n    regions: {us-east: -1}\n",
     "3:24: demand[0].regions.us-east: must be greater than or equal to 0, got -1"),
    ("demand:\n  - model: sd\n    regions: {us-east: 1.5}\n",
     "3:24: demand[0].regions.us-east: expected an integer, got 1.5"),
    ("demand:\n  - model: sd\n    regions: {us east!: 2}\n",
     "3:14: demand[0].regions: 'us east!' is not a region name (allowed: letters, digits, '.', '_' and '-', "
     "1 to 64 of them)"),
    ("demand:\n  - model: sd\n    regions: {a: 1}\n  - model: sd\n    regions: {b: 1}\n",
     "1:1: model 'sd' has more than one demand entry (give each model one)"),
    ("regions:\n  - match: 'https://*'\n    regoin: eu\n",   # one line per mistake: two here
     "2:5: regions[0].region: required field is missing\n{file}:3:5: regions[0].regoin: unknown key, did you mean "
     "'region'? (allowed: match, region)"),
    ("naap:\n  url_env: https://naap.example\n",
     "2:12: naap.url_env: 'https://naap.example' is not an environment variable name (allowed: A-Z, 0-9 and _, "
     "not starting with a digit, e.g. LIVEPEER_TOKEN)"),
    ("naap:\n  gateways: {gw-1: 'eu west'}\n",
     "2:20: naap.gateways.gw-1: 'eu west' is not a region name (allowed: letters, digits, '.', '_' and '-', "
     "1 to 64 of them)"),
])
def test_a_demand_file_mistake_is_one_located_line(tmp_path, text, message):
    bad = tmp_path / "demand.yaml"
    bad.write_text(text)
    with pytest.raises(InputError) as info:
        load_demand(bad)
    assert str(info.value) == f"{bad}:{message.format(file=bad)}"


# -- NaaP's demand ------------------------------------------------------------------------------------------

H10, H11 = "2026-11-20T10:00:00Z", "2026-11-20T11:00:00Z"


def naap_row(hour: str, gateway: str, minutes: float, no_orch: int = 0, model: str | None = MODEL) -> dict:
    """A row as NaaP's StreamingDemandRow serialises it."""
    return {"window_start": hour, "org": "daydream", "gateway": gateway, "pipeline_id": "live-video-to-video",
            "model_id": model, "requested_sessions": 10, "startup_success_sessions": 9,
            "effective_success_rate": 0.9, "total_minutes": minutes, "no_orch_sessions": no_orch}


PAGES = {   # two pages, chained by a cursor
    None: [naap_row(H10, "gw-a", 120, 1), naap_row(H10, "gw-b", 60), naap_row(H10, "gw-c", 90, 2),
           naap_row(H11, "gw-a", 300)],
    "c2": [naap_row(H11, "gw-b", 30, 3), naap_row(H11, "gw-c", 30), naap_row(H11, "gw-z", 45, 1),
           naap_row(H10, "gw-a", 600, model="comfyui"), naap_row(H10, "gw-a", 600, model=None)],
}
# by hand: us-east (gw-a, gw-b) 10h (120+60)/60 = 3.0, 11h (300+30)/60 = 5.5 -> 5.5, unmet 1+3;
# eu-west (gw-c) 10h 90/60 = 1.5, 11h 0.5 -> 1.5, unmet 2; unknown (gw-z) 11h 45/60 = 0.75, unmet 1
WANT = {"us-east": RegionDemand(5.5, 4, H11), "eu-west": RegionDemand(1.5, 2, H10),
        "unknown": RegionDemand(0.75, 1, H11)}


@pytest.fixture
def fake_naap():
    """A fake NaaP (the hosted API cannot exist here): ``answer`` says what it serves; ``seen`` its queries."""
    state: dict = {"answer": "pages", "seen": []}

    class FakeNaaP(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            state["seen"].append((url.path, query))
            if state["answer"] == "500":
                self.send_response(500)
                self.end_headers()
                return
            if state["answer"] == "garbage":
                body = b"<html>gateway timeout</html>"
            elif state["answer"] == "not-a-page":
                body = json.dumps([1, 2]).encode()
            else:
                cursor = query.get("cursor")
                more = cursor is None
                body = json.dumps({"data": PAGES[cursor], "pagination": {
                    "next_cursor": "c2" if more else "", "has_more": more, "page_size": len(PAGES[cursor])},
                    "meta": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeNaaP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_naap_demand_is_each_regions_peak_hour_of_streams_at_once_over_both_pages(fake_naap):
    start, end = NOW - dt.timedelta(days=7), NOW
    rows = read_naap_demand(fake_naap["url"] + "/", start, end)
    assert len(rows) == 9 and all(isinstance(r, NaapDemandRow) for r in rows)
    assert fake_naap["seen"] == [
        ("/v1/streaming/demand", {"start": "2026-11-13T12:00:00Z", "end": "2026-11-20T12:00:00Z", "limit": "1000"}),
        ("/v1/streaming/demand", {"start": "2026-11-13T12:00:00Z", "end": "2026-11-20T12:00:00Z", "limit": "1000",
                                  "cursor": "c2"})]
    assert demand_for(SPEC, MODEL, rows) == ("naap", WANT)
    assert demand_for(SPEC, "comfyui", rows) == ("naap", {"us-east": RegionDemand(10.0, 0, H10)})
    assert demand_for(SPEC, "other", rows) == ("none", {})
    assert demand_for(SPEC, MODEL, []) == ("file", {"us-east": RegionDemand(5.0), "eu-west": RegionDemand(3.0),
                                                    "ap-south": RegionDemand(4.0)})


def test_naaps_demand_replaces_the_files_in_the_gaps(stored, fake_naap):  # noqa: F811
    f = q.Filters(window="7d", model=MODEL, now=NOW)
    rows = naap_rows_for(SPEC, f, {"FAKE_NAAP_URL": fake_naap["url"]})
    got = demand_gaps(DuckDBEngine(stored[0]), f, SPEC, rows, sla=SLA)
    assert got["demand_source"] == "naap"
    slim = {r["region"]: (r["demand_streams"], r["unmet_requests"], r["peak_hour"], r["qualified_slots"], r["gap"],
                          r["surplus"]) for r in got["regions"]}
    assert slim == {"eu-west": (1.5, 2, H10, 0, 1.5, 0), "unknown": (0.75, 1, H11, 0, 0.75, 0),
                    "us-east": (5.5, 4, H11, 8, 0, 2.5)}   # ap-south: the file's demand, replaced by NaaP's
    assert (got["totals"]["demand_streams"], got["totals"]["gap"], got["totals"]["surplus"]) == (7.75, 2.25, 2.5)


def test_a_file_naming_naap_needs_its_variable():
    with pytest.raises(InputError) as info:
        naap_rows_for(SPEC, q.Filters(window="7d", model=MODEL, now=NOW), {})
    assert str(info.value) == ("FAKE_NAAP_URL is not set: the demand file's naap.url_env names it as NaaP's base URL "
                               "(set it, or remove naap:)")
    assert naap_rows_for(DemandSpec(), q.Filters(window="7d", model=MODEL, now=NOW), {}) is None
    for bad in ("not a url", "ftp://naap.example", "http://naap.example:99999"):
        with pytest.raises(InputError) as info:
            naap_rows_for(SPEC, q.Filters(window="7d", model=MODEL, now=NOW), {"FAKE_NAAP_URL": bad})
        assert str(info.value) == ("FAKE_NAAP_URL is not an http(s) URL: it should hold NaaP's base URL, e.g. "
                                   "https://naap-api.livepeer.cloud"), bad   # never the value itself


def test_naap_is_read_over_whole_hours_once_for_every_request_within_its_ttl(stored, fake_naap,  # noqa: F811
                                                                             monkeypatch):
    """A window ending at 12:40 reads NaaP up to 12:00 (the 12:00 hour is still filling); the dashboard reads it
    once for any number of requests within NAAP_TTL_S."""
    from fleet.dashboard.context import Context

    at = NOW.replace(minute=40, second=7)
    ctx = Context(DuckDBEngine(stored[0]), None, demand=SPEC)
    monkeypatch.setenv("FAKE_NAAP_URL", fake_naap["url"])
    for _ in range(3):
        rows, failed = ctx.naap(q.Filters(window="1h", model=MODEL, now=at))
        assert failed is None and rows
    starts = {query["start"] for _, query in fake_naap["seen"]}
    ends = {query["end"] for _, query in fake_naap["seen"]}
    assert (starts, ends) == ({"2026-11-20T11:00:00Z"}, {"2026-11-20T12:00:00Z"})
    assert len({query.get("cursor") for _, query in fake_naap["seen"]}) == len(fake_naap["seen"])   # one read


@pytest.mark.parametrize("answer,message", [
    ("500", "answered HTTP 500"),
    ("garbage", "the answer is not JSON"),
    ("not-a-page", "expected NaaP's page {data: [...], pagination: {...}}"),
])
def test_a_naap_that_fails_is_one_line_without_its_credentials(fake_naap, answer, message):
    fake_naap["answer"] = answer
    base = fake_naap["url"].replace("http://", "http://user:s3cret@") + "/k3y-in-path?token=s3cret"
    with pytest.raises(CapacityError) as info:
        read_naap_demand(base, NOW - dt.timedelta(hours=1), NOW)
    port = fake_naap["url"].rsplit(":", 1)[1]
    # no credentials, query or base path (a proxy may carry a key there) in the message
    assert str(info.value) == f"NaaP demand (http://127.0.0.1:{port}/v1/streaming/demand): {message}"
    assert fake_naap["seen"][0][0] == "/k3y-in-path/v1/streaming/demand" and fake_naap["seen"][0][1]["token"] == "s3cret"


def test_an_unreachable_naap_is_one_line():
    with pytest.raises(CapacityError) as info:
        read_naap_demand("http://127.0.0.1:9/", NOW - dt.timedelta(hours=1), NOW)
    assert str(info.value) == "NaaP demand (http://127.0.0.1:9/v1/streaming/demand): cannot be reached (ConnectError)"


def test_pages_are_followed_only_so_far(fake_naap):
    with pytest.raises(CapacityError) as info:
        read_naap_demand(fake_naap["url"], NOW - dt.timedelta(hours=1), NOW, max_pages=1)
    assert str(info.value).endswith("more than 1 page(s) of 1000 rows (shorten the window)")
