"""The graduation board: each orchestrator x GPU's graduation state for a workflow, from its daily scores.

Each UTC day of the series is scored as the leaderboard scores a window, in one query for the whole series
(``fleet.dashboard.queries.daily_scores``: the sessions that count, the network's formula, each day's own
network benchmark); the rules
(``fleet.graduation``) turn the days into a state and its changes, each with the days that made it. Every
pair starts ``unproven`` on the series' first day: a state is what the days of the series earned.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleet.dashboard.engine import Engine
from fleet.dashboard.queries import daily_scores
from fleet.graduation import Day, GraduationRules, graduate, rule_for

__all__ = ["board", "daily", "utc_now"]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def daily(engine: Engine, model: str, days: int, now: dt.datetime) -> dict[tuple[str, str], list[Day]]:
    """Each pair's days over the ``days`` UTC days up to ``now``'s: counted sessions and their score."""
    now = now.astimezone(dt.timezone.utc)
    today = dt.datetime(now.year, now.month, now.day, tzinfo=dt.timezone.utc)
    since, until = today - dt.timedelta(days=days - 1), today + dt.timedelta(days=1)
    out: dict[tuple[str, str], list[Day]] = {}
    for r in daily_scores(engine, model, since, until):
        day = dt.datetime.fromtimestamp(float(r["day_unix"]), dt.timezone.utc).date()
        out.setdefault((r["orchestrator"], r["gpu"]), []).append(Day(day, int(r["counted"]), r["score"]))
    return out


def board(engine: Engine, rules: GraduationRules, model: str, days: int = 30,
          now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every pair with sessions on the model in the series: its state, its changes and its days."""
    rule = rule_for(rules, model)
    if rule is None:
        return []
    series = daily(engine, model, days, now or utc_now())
    rows = []
    for (orch, gpu), pair_days in sorted(series.items()):
        state, changes = graduate(pair_days, rule)
        rows.append({"orchestrator": orch, "gpu": gpu, "model": model, "state": state,
                     "changes": [{"day": c.day.isoformat(), "state": c.state,
                                  "evidence": [d.isoformat() for d in c.evidence]} for c in changes],
                     "days": [{"day": d.day.isoformat(), "counted": d.counted, "score": d.score} for d in pair_days]})
    return rows
