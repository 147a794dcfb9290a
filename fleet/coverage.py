"""What the monitor tests next: coverage of every orchestrator within a period and a daily budget.

Pure (no Ray, no network; the caller passes the clock, in Unix seconds). The rules:

- **coverage**: an orchestrator is *due* when it has never been tested or its last test started
  ``every_s`` ago or more; of the due ones, an *unproven* one (fewer than ``proven_sessions``
  counted sessions started on the last ``proven_days`` UTC days, today included: those in the stored
  results read back, and those counted since; a monitor that runs on sees them age out as the days
  roll, as the dashboard's windows do) goes first, so the pairs that
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

``pick`` does not scan the targets: a queue (``_Queue``) keeps the due ones in pick order and the others by
the time they next become due, and every method that changes what the order reads (``started``, ``skipped``,
``refused``, ``finished``) re-files the one orchestrator it changed; so a pick costs O(log n), amortised, not
O(n), and a day of a network's picks is not quadratic in its size. It picks what the scan picked, always
(tests/test_coverage.py holds the scan and checks it on random histories).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import heapq
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


def targets_of(snapshot: Any, include: Sequence[str] = (), exclude: Sequence[str] = (),
               known: Sequence[Target] = ()) -> list[Target]:
    """Every orchestrator a capacity snapshot shows for its model, within ``include`` / ``exclude``
    (substrings of the address or URI); with none named (a static count), the gateway's choice. ``known``:
    the targets of an earlier snapshot; an orchestrator's target that is unchanged is reused, not made again
    (a capacity read changes few of them, and the monitor reads one every few seconds)."""
    def eligible(text: str) -> bool:
        return (not include or any(s in text for s in include)) and not any(s in text for s in exclude)

    earlier = {t.key: t for t in known}

    def target(o: Any) -> Target:
        t = earlier.get(o.key)
        if t is not None and t.address == (o.address or None) and t.idle == o.idle:
            return t
        return Target(o.key, o.address or None, o.idle)

    found = [target(o) for o in snapshot.orchestrators if not (include or exclude) or eligible(f"{o.address} {o.uri}")]
    found += [Target(uri) for uri in snapshot.targets if eligible(uri)]
    if not found and not snapshot.orchestrators and not snapshot.targets and snapshot.total > 0:
        found = [Target(ANY_ORCHESTRATOR, None, snapshot.idle)]
    return sorted(found, key=lambda t: t.key)


QUEUE_SLACK = 4   # the queue is rebuilt when it holds this many entries per target (the rest are stale)


def _early(t: float, span: float) -> float:
    """``t + span``, less far more than rounding can account for (see ``Coverage._due_from``)."""
    at = t + span
    return at - 1e-12 * (abs(t) + abs(span) + 1.0) if math.isfinite(at) else at


def _first_per_key(targets: Sequence[Target]) -> dict[str, Target]:
    by_key: dict[str, Target] = {}
    for t in targets:
        by_key.setdefault(t.key, t)   # of two with one key, the first (the scan's ``min`` took the first)
    return by_key


@dataclass
class _Queue:
    """The targets of one key set in pick order, for ``Coverage.pick``: ``ready`` holds the due ones as
    (proven, last tested, key, version), ``waiting`` the others as (when due, key, version). An entry whose
    version is not its key's current one is stale and dropped when it surfaces. Needs a clock that does not
    go back (``Coverage._queue_for`` rebuilds when it does): what is due stays due until its state changes."""

    source: Sequence[Target]
    rules: tuple[float, float | None, int, float]   # every_s, retry_s, proven_sessions, proven_from
    by_key: dict[str, Target]
    size: int = 0
    now: float = -math.inf
    version: dict[str, int] = field(default_factory=dict)
    ready: list[tuple[bool, float, str, int]] = field(default_factory=list)
    waiting: list[tuple[float, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.size = len(self.source)
        self.version = dict.fromkeys(self.by_key, 0)


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
    proven_days: int = 7                     # ... started on this many UTC days, today included
    counted: dict[str, list[float]] = field(default_factory=dict)  # key -> starts of its counted sessions, in
    # order (read back, and since), from a day before ``proven_from`` on (older ones dropped as the days roll)
    proven_from: float = -math.inf           # the first instant that counts: midnight UTC, proven_days - 1 days ago
    last_tested: dict[str, float] = field(default_factory=dict)   # key -> start of its last session that ran
    last_tried: dict[str, float] = field(default_factory=dict)    # key -> last attempt (skipped ones too)
    seen_today: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> category -> tests today
    day: str = ""
    used_s: float = 0.0                      # slot-seconds charged today (finished sessions)
    reserved: dict[str, float] = field(default_factory=dict)      # in-flight session id -> slot-seconds
    last_start: float | None = None
    why: str = ""                            # why the last ``pick`` returned None
    prior: dict[str, tuple[str, float | None, str | None, float | None, float]] = field(default_factory=dict)
    # in flight: key, its last test before, the category counted, the last start before (those undone on a
    # refusal), its start

    _queue: _Queue | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.retry_s is None:
            self.retry_s = self.every_s / 4

    # --- state from stored results ----------------------------------------------------------

    def restore(self, rows: Iterable[Mapping[str, Any]], now: float) -> int:
        """Rebuild the state from stored session rows (``target_orchestrator``, ``started_unix``,
        ``duration_s``, ``outcome``, ``error_phase``, ``excused``, ``prompt_category``); returns how many rows
        it used."""
        self._roll(now)
        self._queue = None   # many orchestrators change: the next pick files them all afresh
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
                self._count(key, started)
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
            forward = day > self.day
            self.day, self.used_s, self.seen_today = day, 0.0, {}
            self.proven_from = now - now % DAY_S - (self.proven_days - 1) * DAY_S   # Unix time has no leap seconds
            if forward:   # sessions that no longer count are let go, a day late (a clock stepped back over
                for starts in self.counted.values():   # midnight, as NTP may, still finds its day's)
                    del starts[:bisect.bisect_left(starts, self.proven_from - DAY_S)]

    def _count(self, key: str, started: float) -> None:
        """A counted session of ``key`` that started at ``started``, kept while it counts towards ``proven``."""
        if started >= self.proven_from - DAY_S:
            bisect.insort(self.counted.setdefault(key, []), started)

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
        """The next test to start now, or None (``why`` says what holds it back). ``targets`` is read once
        per list: pass a new list when they change (as ``targets_of`` does), not the same one changed."""
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
        target = self._first_due(self._queue_for(targets, now), now)
        if target is None:
            self.why = "nothing is due"
            return None
        return Pick(target, self._category(target.key))

    def due(self, key: str, now: float) -> bool:
        """Due (never tested, or its period is up) and not held back by a retry (tried, not tested, within
        ``retry_s``): what ``pick`` may take. Once true it stays true until the state of ``key`` changes."""
        tested, tried = self.last_tested.get(key, -math.inf), self.last_tried.get(key, -math.inf)
        retry_s = self.retry_s if self.retry_s is not None else self.every_s / 4
        return (key not in self.last_tested or now - tested >= self.every_s) and (
            now - tried >= retry_s or tried <= tested)

    def proven(self, key: str) -> bool:
        """``key`` has ``proven_sessions`` counted sessions started since ``proven_from`` (as of the last call
        given the clock)."""
        starts = self.counted.get(key, ())
        return len(starts) - bisect.bisect_left(starts, self.proven_from) >= self.proven_sessions

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

    # --- the queue behind ``pick`` ----------------------------------------------------------------

    def _due_from(self, key: str) -> float:
        """When ``key`` becomes due (``due``), a hair early: rounding may make ``due`` true a few ulps before
        the sum says; ``_first_due`` checks ``due`` itself, so early is only a second look, late would be wrong."""
        tested, tried = self.last_tested.get(key, -math.inf), self.last_tried.get(key, -math.inf)
        retry_s = self.retry_s if self.retry_s is not None else self.every_s / 4
        at = -math.inf if key not in self.last_tested else _early(tested, self.every_s)
        return at if tried <= tested else max(at, _early(tried, retry_s))

    def _queue_for(self, targets: Sequence[Target], now: float) -> _Queue:
        """The queue for these targets at ``now``: kept while the keys, the rules and the clock's direction
        hold, re-pointed at a new list of the same keys, else built afresh (O(n), as rare as those changes)."""
        q, rules = self._queue, (self.every_s, self.retry_s, self.proven_sessions, self.proven_from)
        if q is not None and (targets is not q.source or len(targets) != q.size):
            by_key = _first_per_key(targets)
            if by_key.keys() == q.version.keys():
                q.source, q.size, q.by_key = targets, len(targets), by_key
            else:
                q = None
        if (q is None or q.rules != rules or now < q.now
                or len(q.ready) + len(q.waiting) > QUEUE_SLACK * len(q.version) + 64):   # stale entries
            q = _Queue(targets, rules, _first_per_key(targets) if q is None else q.by_key)
            q.waiting = [(self._due_from(k), k, 0) for k in q.version]
            heapq.heapify(q.waiting)
        q.now = now
        self._queue = q
        return q

    def _first_due(self, q: _Queue, now: float) -> Target | None:
        """The first due target in pick order (unproven first, then least recently tested, then key):
        those whose time has come move from ``waiting`` to ``ready``; stale entries are dropped."""
        again = []
        while q.waiting and q.waiting[0][0] <= now:
            entry = heapq.heappop(q.waiting)
            _, key, version = entry
            if version != q.version[key]:
                continue
            if self.due(key, now):
                heapq.heappush(q.ready, (self.proven(key), self.last_tested.get(key, -math.inf), key, version))
            else:
                again.append(entry)   # looked at a hair early (``_due_from``): not yet
        for entry in again:
            heapq.heappush(q.waiting, entry)
        while q.ready and q.ready[0][3] != q.version[q.ready[0][2]]:
            heapq.heappop(q.ready)
        return q.by_key[q.ready[0][2]] if q.ready else None

    def _changed(self, key: str) -> None:
        """``key``'s state changed: its entries are stale; it is filed again by when it is due."""
        q = self._queue
        if q is not None and key in q.version:
            q.version[key] += 1
            heapq.heappush(q.waiting, (self._due_from(key), key, q.version[key]))

    # --- what happened -----------------------------------------------------------------------

    def started(self, session_id: str, pick: Pick, now: float) -> None:
        self._roll(now)
        key = pick.target.key
        self.prior[session_id] = (key, self.last_tested.get(key), pick.category, self.last_start, now)
        self.last_start = now
        self.last_tried[key] = now
        self.last_tested[key] = now
        self.reserved[session_id] = self.session_s
        if pick.category:
            seen = self.seen_today.setdefault(key, {})
            seen[pick.category] = seen.get(pick.category, 0) + 1
        self._changed(key)

    def skipped(self, pick: Pick, now: float) -> None:
        """No slot for it: tried, not tested (it stays due, retried after ``retry_s``)."""
        self.last_tried[pick.target.key] = now
        self._changed(pick.target.key)

    def refused(self, session_id: str) -> None:
        """The gateway found no orchestrator for a started session (a skip after all): it was tried, not
        tested, so the orchestrator stays due and is retried after ``retry_s``, as ``restore`` reads it."""
        key, before, category, last_start, _ = self.prior.pop(session_id, ("", None, None, None, 0.0))
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
        self._changed(key)

    def finished(self, session_id: str, held_s: float, now: float, counts: bool = False) -> None:
        """Charge what the session held (its reservation is returned); ``counts``: the SLA counts it."""
        self._roll(now)
        key, *_, started = self.prior.pop(session_id, ("", 0.0))
        if counts and key:
            self._count(key, started)
            self._changed(key)
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
