"""Graduation (fleet.graduation, fleet.dashboard.graduation): the rules as a state machine on known day
sequences and as properties; the daily scores of the board against the campaign verdict's own scoring code
on the dashboard test's dataset; the rules file's errors and the command."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_dashboard import NOW, ORCHS, as_row, dataset

from fleet.dashboard.engine import DuckDBEngine
from fleet.dashboard.graduation import board, daily
from fleet.errors import InputError
from fleet.graduation import Day, GraduationRule, GraduationRules, graduate, load_rules, rule_for
from fleet.results.sink import ParquetSink
from fleet.results.verdict import counted, sla_score
from fleet.scenario import SessionThresholds

RULE = GraduationRule.model_validate({"model": "sd", "graduate": {"days": 3, "min_sessions": 5, "min_score": 90},
                                      "demote": {"days": 2}})
D0 = dt.date(2026, 11, 1)


def days(*scores: float | None, n: int = 10) -> list[Day]:
    """Consecutive days from D0 with these scores (None: no session that day; a negative score: too few)."""
    return [Day(D0 + dt.timedelta(days=i), 0 if s is None else 2 if s < 0 else n, None if s is None else abs(s))
            for i, s in enumerate(scores)]


@pytest.mark.parametrize("scores,state,changes", [
    ((95, 95), "unproven", []),                                      # two good days of three
    ((95, 95, 95), "graduated", [(2, "graduated", (0, 1, 2))]),
    ((95, 80, 95, 95), "unproven", []),                              # a bad day breaks the run
    ((95, None, 95, -99, 95), "graduated", [(4, "graduated", (0, 2, 4))]),  # unjudged days neither count nor break
    ((95, 95, 95, 80, 95, 80, 80), "demoted", [(2, "graduated", (0, 1, 2)), (6, "demoted", (5, 6))]),
    ((95, 95, 95, 80, 80, 95, 95, 95), "graduated",
     [(2, "graduated", (0, 1, 2)), (4, "demoted", (3, 4)), (7, "graduated", (5, 6, 7))]),
    ((90, 90, 90), "graduated", [(2, "graduated", (0, 1, 2))]),      # min_score reached is good
])
def test_the_rules_on_known_day_sequences(scores, state, changes):
    got_state, got = graduate(days(*scores), RULE)
    assert got_state == state
    assert [(c.day, c.state, c.evidence) for c in got] == [
        (D0 + dt.timedelta(days=i), s, tuple(D0 + dt.timedelta(days=e) for e in ev)) for i, s, ev in changes]


@given(st.lists(st.one_of(st.none(), st.floats(-100, 100)), max_size=40))
def test_every_change_rests_on_enough_judged_days_of_its_kind_in_a_row(scores):
    series = days(*scores)
    state, changes = graduate(series, RULE)
    judged = [d for d in series if d.score is not None and d.counted >= RULE.graduate.min_sessions]
    assert [c.state for c in changes] == (["graduated", "demoted"] * len(changes))[:len(changes)]
    for c in changes:
        needed = RULE.graduate.days if c.state == "graduated" else RULE.demote.days
        ev = [d for d in judged if d.day in c.evidence]
        assert len(ev) == needed and c.evidence[-1] == c.day
        good = [d.score is not None and d.score >= RULE.graduate.min_score for d in ev]
        assert all(good) if c.state == "graduated" else not any(good)
        between = [d for d in judged if c.evidence[0] <= d.day <= c.evidence[-1]]
        assert between == ev   # in a row: no other judged day among them
    assert state == (changes[-1].state if changes else "unproven")


def test_a_rules_file_mistake_is_one_located_line(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - model: sd\n    graduate: {days: 0}\n")
    with pytest.raises(InputError) as info:
        load_rules(bad)
    (line,) = str(info.value).splitlines()
    assert line == f"{bad}:3:22: rules[0].graduate.days: must be greater than or equal to 1, got 0", line


def test_a_model_with_two_rules_is_refused_at_the_rules_line(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - model: sd\n  - model: sd\n    demote: {days: 9}\n")
    with pytest.raises(InputError) as info:
        load_rules(bad)
    (line,) = str(info.value).splitlines()
    assert line.endswith("model 'sd' has more than one rule (give each model one)"), line


def test_the_rule_for_a_model_is_its_own_else_the_catch_all():
    rules = GraduationRules.model_validate({"rules": [{"model": "sd"}, {"model": "*", "demote": {"days": 5}}]})
    assert rule_for(rules, "sd").model == "sd" and rule_for(rules, "other").demote.days == 5
    assert rule_for(GraduationRules.model_validate({"rules": [{"model": "sd"}]}), "other") is None


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    d = tmp_path_factory.mktemp("graduation")
    rows = dataset()
    sink = ParquetSink(d, "camp-g", {"scenario": "graduation"})
    sink.write([as_row({**r, "campaign_id": "camp-g", "run_id": "camp-g"}) for r in rows])
    return d, rows


def truth_days(rows: list[dict], model: str, n: int) -> dict[str, list[Day]]:
    """Each orchestrator's days from the verdict code: its sessions that UTC day, that day's network baseline."""
    today = dt.datetime(NOW.year, NOW.month, NOW.day, tzinfo=dt.timezone.utc)
    out: dict[str, list[Day]] = {}
    for back in range(n - 1, -1, -1):
        start = today - dt.timedelta(days=back)
        day = [r for r in rows if r["model"] == model
               and start.timestamp() <= r["started_unix"] < (start + dt.timedelta(days=1)).timestamp()]
        for orch in sorted({r["orchestrator_url"] for r in day}):
            mine = [r for r in day if r["orchestrator_url"] == orch]
            s = sla_score(mine, SessionThresholds(), baseline=counted(day))
            out.setdefault(orch, []).append(Day(start.date(), len(counted(mine)), s["score"]))
    return out


@pytest.mark.parametrize("host_tz", ["UTC", "Asia/Tokyo"])
def test_the_boards_daily_scores_are_the_verdict_codes(stored, host_tz, monkeypatch):
    """UTC days whatever the host's zone (DuckDB truncates in its connection's zone: the host's by default)."""
    import time

    monkeypatch.setenv("TZ", host_tz)
    time.tzset()
    d, rows = stored
    got = daily(DuckDBEngine(d), "streamdiffusion", 8, NOW)
    want = truth_days(rows, "streamdiffusion", 8)
    assert {orch for orch, _ in got} == set(want) == set(ORCHS)
    for (orch, gpu), series in got.items():
        assert gpu == ORCHS[orch][0]
        assert [(x.day, x.counted) for x in series] == [(x.day, x.counted) for x in want[orch]], orch
        assert [x.score for x in series] == pytest.approx([x.score for x in want[orch]], abs=0.01), orch


def test_the_board_graduates_the_pairs_the_rules_graduate(stored):
    d, rows = stored
    want = truth_days(rows, "streamdiffusion", 8)
    scores = sorted(x.score for series in want.values() for x in series if x.score is not None)
    rule = {"model": "streamdiffusion", "graduate": {"days": 2, "min_sessions": 3,
                                                    "min_score": scores[len(scores) // 2]}, "demote": {"days": 2}}
    rules = GraduationRules.model_validate({"rules": [rule]})
    got = {r["orchestrator"]: r for r in board(DuckDBEngine(d), rules, "streamdiffusion", 8, NOW)}
    states = {orch: graduate(series, rules.rules[0])[0] for orch, series in want.items()}
    assert {o: r["state"] for o, r in got.items()} == states
    assert "graduated" in states.values() and set(states.values()) != {"graduated"}   # the test tells them apart
    for r in got.values():
        for c in r["changes"]:
            assert all(any(x["day"] == e and x["counted"] >= 3 for x in r["days"]) for e in c["evidence"])


def test_the_command_prints_the_board_and_refuses_a_model_no_rule_names(stored, cli, tmp_path, monkeypatch):
    from fleet.dashboard import graduation as board_module

    monkeypatch.setattr(board_module, "utc_now", lambda: NOW)   # the dataset's days
    d, _ = stored
    out = cli("graduation", "scenarios/rules/graduation.yaml", "--model", "streamdiffusion", "--results", str(d),
              "--days", "400", "--json")
    assert out.code == 1 and out.err == "--days 400: give 1 to 366 days\n"
    out = cli("graduation", "scenarios/rules/graduation.yaml", "--model", "streamdiffusion", "--results", str(d),
              "--json")
    assert out.code == 0 and {p["orchestrator"] for p in json.loads(out.out)["pairs"]} == set(ORCHS)
    out = cli("graduation", "scenarios/rules/graduation.yaml", "--model", "streamdiffusion", "--results", str(d))
    lines = out.out.splitlines()
    assert out.code == 0 and len(lines) == 4 and all(": unproven" in x and "judged day(s)" in x for x in lines), lines
    rules = tmp_path / "only.yaml"
    rules.write_text("rules:\n  - model: sd\n")
    out = cli("graduation", str(rules), "--model", "other", "--results", str(d))
    assert out.code == 1 and out.err == f"{rules}: no rule names model 'other' (add one, or one for \"*\")\n"
    schema = json.loads(cli("schema", "graduation").out)
    assert schema["title"] == "fleet graduation rules" and "rules" in schema["properties"]


def test_a_corrupt_parquet_file_is_one_line_naming_it(cli, tmp_path):
    day = tmp_path / "campaign=x" / "date=2026-11-20"
    day.mkdir(parents=True)
    (day / "sessions-1.parquet").write_bytes(b"not parquet")
    out = cli("graduation", "scenarios/rules/graduation.yaml", "--model", "streamdiffusion", "--results", str(tmp_path))
    assert out.code == 1 and out.err.count("\n") == 1 and "Traceback" not in out.err, out.err
    assert out.err.startswith(f"{tmp_path}: cannot read the stored results (") and "sessions-1.parquet" in out.err


@pytest.mark.slow
def test_clickhouse_gives_the_same_daily_scores(stored, clickhouse_db):
    from fleet.dashboard.engine import ClickHouseEngine
    from fleet.results.clickhouse import push_campaign

    d, _ = stored
    push_campaign(d / "campaign=camp-g", clickhouse_db)
    ch, duck = daily(ClickHouseEngine(clickhouse_db), "streamdiffusion", 8, NOW), daily(DuckDBEngine(d), "streamdiffusion", 8, NOW)
    assert set(ch) == set(duck)
    for pair, series in duck.items():
        assert [(x.day, x.counted) for x in ch[pair]] == [(x.day, x.counted) for x in series], pair
        assert [x.score for x in ch[pair]] == pytest.approx([x.score for x in series], abs=0.01), pair
