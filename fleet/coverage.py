"""What the monitor tests next: coverage of every orchestrator within a period and a daily budget.

Pure (no Ray, no network; the caller passes the clock, in Unix seconds). The rules:

- **coverage**: an orchestrator is *due* when it has never been tested or its last test started
  ``every_s`` ago or more; of the due ones, an *unproven* one (fewer than ``proven_sessions``
  counted sessions in the stored results read back, and since) goes first, so the pairs that
  qualified capacity and graduation cannot judge yet get their evidence first; then the one tested
  least recently (never-tested first, then by key, so the order is stable);
- **pacing**: starts are at least ``interval`` apart, the period spread over the targets
  (``every_s / targets``), or wider when the budget needs it. A fresh start with nothing stored
  therefore ramps through the network one orchestrator at a time, and a restart, which rebuilds
  the state from the stored results, carries on where the stored results left off: no burst;
- **budget**: at most ``daily_budget`` x the network's slots x 86 400 slot-seconds per UTC day.
  A session reserves ``session_s`` when it starts and is charged what it held when it ends (a
  skipped one costs nothing). When the budget (or capacity) cannot cover every target within the
  period, coverage degrades evenly, and ``status()`` says so: the period it does reach, and why;
- **prompt categories** rotate per orchestrator: each test takes the category that orchestrator
  has seen least today (ties in the scenario's order, starting at an offset of the orchestrator's
  own), so over a day it sees them all;
- an orchestrator skipped for capacity is tried again after ``retry_s``, not at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.results.verdict import counted as sla_counted

__all__ = ["ANY_ORCHESTRATOR", "Coverage", "Pick", "Target", "counts", "targets_of", "utc_day"]

DAY_S = 86_400.0
ANY_ORCHESTRATOR = "(gateway's choice)"  # the one target when the capacity source names no orchestrators


def counts(row: Mapping[str, Any]) -> bool:
    """The SLA counts the session (fleet.results.verdict.counted: not skipped, not ours, not excused)."""
    return bool(sla_counted([{"outcome": row.get("outcome"), "error_phase": row.get("error_phase"),
                              "excused": row.get("excused")}]))


def utc_day(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Target:
    """An orchestrator the capacity source shows for the model."""

    key: str                  # its service URI, else its address (what the gateway matches a session to)
    address: str | None = None
    idle: int | None = None   # idle slots now, when the source says


def targets_of(snapshot: Any, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Target]:
    """Every orchestrator a capacity snapshot shows for its model, within ``include`` / ``exclude``
    (substrings of the address or URI); with none named (a static count), the gateway's choice."""
    def eligible(text: str) -> bool:
        return (not include or any(s in text for s in include)) and not any(s in text for s in exclude)

    found = [Target(o.key, o.address or None, o.idle) for o in snapshot.orchestrators
             if eligible(f"{o.address} {o.uri}")]
    found += [Target(uri) for uri in snapshot.targets if eligible(uri)]
    if not found and not snapshot.orchestrators and not snapshot.targets and snapshot.total > 0:
        found = [Target(ANY_ORCHESTRATOR, None, snapshot.idle)]
    return sorted(found, key=lambda t: t.key)


@dataclass(frozen=True)
class Pick:
    target: Target
    category: str | None


@dataclass
class Coverage:
    every_s: float
    session_s: float
    daily_budget: float                      # a fraction of the network's slot-seconds per day
    categories: Sequence[str] = ()
    retry_s: float | None = None
    proven_sessions: int = 0                 # counted sessions that prove an orchestrator (0: no priority)
    counted: dict[str, int] = field(default_factory=dict)         # key -> counted sessions (read back, since)
    last_tested: dict[str, float] = field(default_factory=dict)   # key -> start of its last session that ran
    last_tried: dict[str, float] = field(default_factory=dict)    # key -> last attempt (skipped ones too)
    seen_today: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> category -> tests today
    day: str = ""
    used_s: float = 0.0                      # slot-seconds charged today (finished sessions)
    reserved: dict[str, float] = field(default_factory=dict)      # in-flight session id -> slot-seconds
    last_start: float | None = None
    why: str = ""                            # why the last ``pick`` returned None
    prior: dict[str, tuple[str, float | None, str | None, float | None]] = field(default_factory=dict)  # in
    # flight: key, its last test before, the category counted, the last start before (undone on a refusal)

    def __post_init__(self) -> None:
        if self.retry_s is None:
            self.retry_s = self.every_s / 4

    # --- state from stored results ----------------------------------------------------------

    def restore(self, rows: Iterable[Mapping[str, Any]], now: float) -> int:
        """Rebuild the state from stored session rows (``target_orchestrator``, ``started_unix``,
        ``duration_s``, ``outcome``, ``error_phase``, ``excused``, ``prompt_category``); returns how many rows
        it used."""
        self._roll(now)
        n = 0
        for r in rows:
            key, started = r.get("target_orchestrator"), r.get("started_unix")
            if not key or started is None or started > now:
                continue
            n += 1
            self.last_tried[key] = max(self.last_tried.get(key, started), started)
            if r.get("outcome") == "skipped_no_capacity":
                continue
            self.last_tested[key] = max(self.last_tested.get(key, started), started)
            if counts(r):
                self.counted[key] = self.counted.get(key, 0) + 1
            self.last_start = started if self.last_start is None else max(self.last_start, started)
            if utc_day(started) == self.day:
                self.used_s += float(r.get("duration_s") or 0.0)
                cat = r.get("prompt_category")
                if cat:
                    seen = self.seen_today.setdefault(key, {})
                    seen[cat] = seen.get(cat, 0) + 1
        return n

    def _roll(self, now: float) -> None:
        day = utc_day(now)
        if day != self.day:
            self.day, self.used_s, self.seen_today = day, 0.0, {}

    # --- the rules ---------------------------------------------------------------------------

    def budget_s(self, total_slots: int) -> float:
        """Slot-seconds the monitor may use per UTC day."""
        return self.daily_budget * max(0, total_slots) * DAY_S

    def interval(self, targets: int, total_slots: int) -> float:
        """Least time between two starts: the period spread over the targets, or what the budget allows."""
        if targets <= 0:
            return self.every_s
        by_period = self.every_s / targets
        rate = self.daily_budget * total_slots  # slot-seconds per second the budget allows
        by_budget = self.session_s / rate if rate > 0 else math.inf
        return max(by_period, by_budget)

    def spent_s(self) -> float:
        return self.used_s + sum(self.reserved.values())

    def pick(self, targets: Sequence[Target], total_slots: int, now: float) -> Pick | None:
        """The next test to start now, or None (``why`` says what holds it back)."""
        self._roll(now)
        if not targets:
            self.why = "the capacity source shows no orchestrator for the model"
            return None
        if self.spent_s() + self.session_s > self.budget_s(total_slots):
            self.why = "today's budget is spent"
            return None
        gap = self.interval(len(targets), total_slots)
        if self.last_start is not None and now - self.last_start < gap:
            self.why = "pacing"
            return None
        due = [t for t in targets if (age := self.age(t.key, now)) is None or age >= self.every_s]
        retry_s = self.retry_s if self.retry_s is not None else self.every_s / 4
        due = [t for t in due if now - self.last_tried.get(t.key, -math.inf) >= retry_s
               or self.last_tried.get(t.key, -math.inf) <= self.last_tested.get(t.key, -math.inf)]
        if not due:
            self.why = "nothing is due"
            return None
        target = min(due, key=lambda t: (self.proven(t.key), self.last_tested.get(t.key, -math.inf), t.key))
        return Pick(target, self._category(target.key))

    def proven(self, key: str) -> bool:
        return self.counted.get(key, 0) >= self.proven_sessions

    def age(self, key: str, now: float) -> float | None:
        last = self.last_tested.get(key)
        return None if last is None else now - last

    def _category(self, key: str) -> str | None:
        if not self.categories:
            return None
        seen = self.seen_today.get(key, {})
        offset = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(self.categories)
        order = {c: (i - offset) % len(self.categories) for i, c in enumerate(self.categories)}
        return min(self.categories, key=lambda c: (seen.get(c, 0), order[c]))

    # --- what happened -----------------------------------------------------------------------

    def started(self, session_id: str, pick: Pick, now: float) -> None:
        self._roll(now)
        key = pick.target.key
        self.prior[session_id] = (key, self.last_tested.get(key), pick.category, self.last_start)
        self.last_start = now
        self.last_tried[key] = now
        self.last_tested[key] = now
        self.reserved[session_id] = self.session_s
        if pick.category:
            seen = self.seen_today.setdefault(key, {})
            seen[pick.category] = seen.get(pick.category, 0) + 1

    def skipped(self, pick: Pick, now: float) -> None:
        """No slot for it: tried, not tested (it stays due, retried after ``retry_s``)."""
        self.last_tried[pick.target.key] = now

    def refused(self, session_id: str) -> None:
        """The gateway found no orchestrator for a started session (a skip after all): it was tried, not
        tested, so the orchestrator stays due and is retried after ``retry_s``, as ``restore`` reads it."""
        key, before, category, last_start = self.prior.pop(session_id, ("", None, None, None))
        if not key:
            return
        self.last_start = last_start
        if before is None:
            self.last_tested.pop(key, None)
        else:
            self.last_tested[key] = before
        seen = self.seen_today.get(key, {})
        if category and seen.get(category):
            seen[category] -= 1

    def finished(self, session_id: str, held_s: float, now: float, counts: bool = False) -> None:
        """Charge what the session held (its reservation is returned); ``counts``: the SLA counts it."""
        self._roll(now)
        key = self.prior.pop(session_id, ("",))[0]
        if counts and key:
            self.counted[key] = self.counted.get(key, 0) + 1
        self.reserved.pop(session_id, None)
        self.used_s += max(0.0, held_s)

    # --- what it says ----------------------------------------------------------------------------

    def status(self, targets: Sequence[Target], total_slots: int, now: float) -> dict[str, Any]:
        """Coverage now: each target's age, the overdue ones, the period reached and why it is short."""
        self._roll(now)
        gap = self.interval(len(targets), total_slots)
        period = gap * len(targets)
        ages = {t.key: self.age(t.key, now) for t in targets}
        overdue = sorted(k for k, a in ages.items() if a is None or a > self.every_s + gap)
        budget = self.budget_s(total_slots)
        limits = []
        if targets and period > self.every_s * 1.001:
            limits.append(f"the daily budget ({self.daily_budget:.3g} of {total_slots} slots) allows one "
                          f"{self.session_s:g} s session every {gap:.0f} s: each of {len(targets)} orchestrators "
                          f"every {period / 60:.1f} min instead of {self.every_s / 60:g}")
        if self.spent_s() + self.session_s > budget:
            limits.append(f"today's budget of {budget:.0f} slot-seconds is spent")
        return {"targets": len(targets), "every_s": self.every_s, "interval_s": round(gap, 3),
                "period_s": round(period, 3), "ages_s": {k: None if a is None else round(a, 1) for k, a in ages.items()},
                "overdue": overdue, "unproven": sorted(t.key for t in targets if not self.proven(t.key)),
                "budget_s": round(budget, 1), "used_s": round(self.spent_s(), 1),
                "day": self.day, "degraded": limits}
