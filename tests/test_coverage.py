"""The monitor's coverage rules (fleet.coverage), on a simulated clock: period, pacing, budget,
restart from stored rows, prompt-category rotation, retries after a capacity skip."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.capacity import CapacitySnapshot, OrchestratorSlots, static_capacity
from fleet.coverage import ANY_ORCHESTRATOR, DAY_S, Coverage, Pick, Target, targets_of

T0 = 1_795_000_000.0 - (1_795_000_000.0 % DAY_S)  # a UTC midnight
TARGETS = [Target(f"https://orch-{i}.test:8935") for i in range(1, 5)]
CATEGORIES = ["portraits", "landscapes", "cartoon", "lighting"]


@dataclass
class Sim:
    """Drives a Coverage with a fake clock: each started session ends ``session_s`` later, holding its slot."""

    cov: Coverage
    targets: list[Target]
    slots: int = 16
    refuse: set[str] = field(default_factory=set)
    starts: list[tuple[float, str, str | None]] = field(default_factory=list)
    skips: list[tuple[float, str]] = field(default_factory=list)
    live: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def run(self, t_from: float, seconds: float, step: float = 0.5) -> None:
        t = t_from
        for _ in range(int(seconds / step)):
            for sid, end in list(self.live.items()):
                if end <= t:
                    self.cov.finished(sid, self.cov.session_s, t)
                    del self.live[sid]
            pick = self.cov.pick(self.targets, self.slots, t)
            if pick is not None:
                if pick.target.key in self.refuse:
                    self.cov.skipped(pick, t)
                    self.skips.append((t, pick.target.key))
                else:
                    self.n += 1
                    sid = f"s{self.n}"
                    self.cov.started(sid, pick, t)
                    self.live[sid] = t + self.cov.session_s
                    self.starts.append((t, pick.target.key, pick.category))
            t += step

    def rows(self) -> list[dict]:
        """What a monitor stopped now would have stored: every session (a stop ends and stores the live ones)."""
        return [{"target_orchestrator": k, "started_unix": t, "duration_s": self.cov.session_s, "outcome": "ok",
                 "prompt_category": c} for t, k, c in self.starts]


def coverage(**kw) -> Coverage:
    args = {"every_s": 60.0, "session_s": 10.0, "daily_budget": 0.05, "categories": CATEGORIES} | kw
    return Coverage(**args)


def test_a_fresh_start_ramps_through_the_network_one_orchestrator_per_interval_then_keeps_the_period():
    sim = Sim(coverage(), TARGETS)
    sim.run(T0, 600)
    assert sim.cov.interval(4, 16) == 15.0  # the 60 s period spread over 4 orchestrators
    first = sim.starts[:4]
    assert [t - T0 for t, _, _ in first] == [0.0, 15.0, 30.0, 45.0]
    assert {k for _, k, _ in first} == {t.key for t in TARGETS}  # each once before any twice
    times = [t for t, _, _ in sim.starts]
    assert min(b - a for a, b in zip(times, times[1:])) >= 15.0  # never a burst
    for target in TARGETS:
        mine = [t for t, k, _ in sim.starts if k == target.key]
        gaps = [b - a for a, b in zip(mine, mine[1:])]
        assert gaps and all(60.0 <= g <= 60.0 + 15.0 for g in gaps), (target.key, gaps)  # within its period
    assert sim.cov.status(TARGETS, 16, T0 + 600)["overdue"] == []


def test_a_restart_from_stored_rows_resumes_without_a_burst_and_remembers_the_budget():
    before = Sim(coverage(), TARGETS)
    before.run(T0, 290)
    now = T0 + 290  # 5 s after the last start (at 285): mid-interval
    rows = before.rows()
    restarted = coverage()
    assert restarted.restore(rows, now) == len(rows)
    assert restarted.used_s == sum(r["duration_s"] for r in rows)  # today's spend is not forgotten
    after = Sim(restarted, TARGETS)
    after.run(now, 180)
    last = {k: max(t for t, kk, _ in before.starts if kk == k) for k in (t.key for t in TARGETS)}
    first_again = {}
    for t, k, _ in after.starts:
        first_again.setdefault(k, t)
    # nobody is tested again before its period is up, and starts stay an interval apart across the restart
    assert all(first_again[k] - last[k] >= 60.0 for k in first_again), (first_again, last)
    assert after.starts[0][0] - max(t for t, _, _ in before.starts) >= 15.0
    assert len(after.starts) <= 180 / 15 + 1
    # a monitor that forgot its state would test some orchestrator again before its period is up
    forgetful = Sim(coverage(), TARGETS)
    forgetful.run(now, 60)
    assert any(t - last[k] < 60.0 for t, k, _ in forgetful.starts), forgetful.starts


def test_a_short_budget_widens_the_period_evenly_and_says_so():
    cov = coverage(daily_budget=0.0005)  # 16 slots x 0.0005 = 0.008 slot-s/s: one 10 s session per 1250 s
    assert cov.interval(4, 16) == 1250.0
    status = cov.status(TARGETS, 16, T0)
    assert status["period_s"] == 5000.0 and any("instead of 1" in line for line in status["degraded"])
    sim = Sim(cov, TARGETS)
    sim.run(T0, 5000, step=5.0)
    assert len(sim.starts) == 4 and len({k for _, k, _ in sim.starts}) == 4  # everyone, each less often


def test_a_spent_budget_stops_starts_until_the_next_utc_day():
    cov = coverage()
    budget = cov.budget_s(16)
    cov.restore([{"target_orchestrator": TARGETS[0].key, "started_unix": T0 + 10, "duration_s": budget - 5.0,
                  "outcome": "ok", "prompt_category": "portraits"}], T0 + 100)
    assert cov.pick(TARGETS, 16, T0 + 100) is None and cov.why == "today's budget is spent"
    assert any("spent" in line for line in cov.status(TARGETS, 16, T0 + 100)["degraded"])
    assert cov.pick(TARGETS, 16, T0 + DAY_S + 1) is not None  # a new day, a new budget


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), every_min=st.sampled_from([1, 5, 30, 120]), session_s=st.sampled_from([5.0, 20.0, 60.0]),
       budget=st.sampled_from([0.0005, 0.005, 0.05, 0.5]), slots=st.integers(1, 64))
def test_a_day_never_spends_more_than_its_budget_and_starts_stay_paced(n, every_min, session_s, budget, slots):
    targets = [Target(f"o{i}") for i in range(n)]
    cov = coverage(every_s=every_min * 60.0, session_s=session_s, daily_budget=budget)
    sim = Sim(cov, targets, slots=slots)
    sim.run(T0, DAY_S, step=max(5.0, session_s))
    spent = len(sim.starts) * session_s
    assert spent <= cov.budget_s(slots) + 1e-6
    times = [t for t, _, _ in sim.starts]
    gap = cov.interval(n, slots)
    assert all(b - a >= gap - 1e-6 for a, b in zip(times, times[1:]))


def test_each_orchestrator_sees_every_prompt_category_in_turn():
    sim = Sim(coverage(), TARGETS[:1])
    sim.run(T0, 60 * len(CATEGORIES))
    cats = [c for _, _, c in sim.starts][:len(CATEGORIES)]
    assert sorted(cats) == sorted(CATEGORIES), cats


def test_an_orchestrator_skipped_for_capacity_is_retried_after_retry_s_and_the_others_go_on():
    sim = Sim(coverage(), TARGETS, refuse={TARGETS[0].key})
    sim.run(T0, 120)
    tried = [t for t, k in sim.skips if k == TARGETS[0].key]
    assert len(tried) >= 2 and all(b - a >= 15.0 for a, b in zip(tried, tried[1:]))  # retry_s = every / 4
    assert {k for _, k, _ in sim.starts} == {t.key for t in TARGETS[1:]}
    status = sim.cov.status(TARGETS, 16, T0 + 120)
    assert status["overdue"] == [TARGETS[0].key] and status["ages_s"][TARGETS[0].key] is None


def test_targets_come_from_the_capacity_source_within_include_and_exclude():
    snap = CapacitySnapshot(model="m", orchestrators=(
        OrchestratorSlots("0xa", "https://a:8935", 1, 0), OrchestratorSlots("0xb", "https://b:8935", 0, 2),
        OrchestratorSlots("", "https://c:8935", 2, 0)), source="gateway")
    assert [t.key for t in targets_of(snap)] == ["https://a:8935", "https://b:8935", "https://c:8935"]
    assert [t.key for t in targets_of(snap, exclude=("0xb",))] == ["https://a:8935", "https://c:8935"]
    assert [t.key for t in targets_of(snap, include=("c:8935",))] == ["https://c:8935"]
    assert [t.key for t in targets_of(static_capacity(4, "m"))] == [ANY_ORCHESTRATOR]
    assert targets_of(static_capacity(0, "m")) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "0xa", "0xb"]), st.sampled_from(["", "https://a", "https://b", "https://c"]),
                          st.integers(0, 3)), max_size=6),
       st.lists(st.tuples(st.sampled_from(["", "0xa", "0xb"]), st.sampled_from(["", "https://a", "https://b", "https://c"]),
                          st.integers(0, 3)), max_size=6),
       st.sampled_from([((), ()), (("a",), ()), ((), ("0xb",))]))
def test_targets_made_with_an_earlier_snapshots_are_the_targets_made_afresh(before, after, within):
    """``known`` only saves making a target again: the targets are equal to those made without it, and an
    unchanged orchestrator's is the earlier object."""
    def snap(rows: list[tuple[str, str, int]]) -> CapacitySnapshot:
        return CapacitySnapshot("m", tuple(OrchestratorSlots(a, u, idle, 0) for a, u, idle in rows), source="gateway")

    include, exclude = within
    earlier = targets_of(snap(before), include, exclude)
    again = targets_of(snap(after), include, exclude, known=earlier)
    assert again == targets_of(snap(after), include, exclude)
    first = {t.key: t for t in earlier}
    assert all(t is first[t.key] for t in again if first.get(t.key) == t)


def test_a_session_the_gateway_refuses_leaves_its_orchestrator_due_and_retried_after_retry_s():
    """The lease was granted and the session started, then the gateway said "no orchestrators available": it was
    tried, not tested, exactly as a restart reads the stored skip. The orchestrator is picked again once
    ``retry_s`` has passed (not ``every_s``), and the category it was counted for is given back."""
    one = [Target("https://o1:8935", "0x1", 4)]
    cov = coverage(every_s=600.0, retry_s=60.0)
    first = cov.pick(one, 16, T0)
    assert first is not None
    cov.started("s1", first, T0)
    cov.refused("s1")
    cov.finished("s1", 0.0, T0 + 1)
    assert cov.age(first.target.key, T0 + 1) is None and cov.seen_today[first.target.key][first.category] == 0
    assert cov.pick(one, 16, T0 + 30) is None                       # tried 30 s ago: not yet
    again = cov.pick(one, 16, T0 + 61)
    assert again is not None and again.target == first.target      # retried after retry_s, not every_s
    restored = coverage(every_s=600.0, retry_s=60.0)
    restored.restore([{"target_orchestrator": first.target.key, "started_unix": T0,
                       "outcome": "skipped_no_capacity", "duration_s": 0.0}], T0 + 1)
    assert (restored.last_tested, restored.last_tried) == (cov.last_tested, cov.last_tried)


def test_of_the_due_orchestrators_the_unproven_go_first_until_they_have_their_sessions():
    """Three orchestrators, all due. o1 has 12 counted sessions read back; o2 only 3 (its tester failures,
    excused failures and skips do not count); o3 has 10 and was tested longest ago. Least recently tested first
    would take o3; with ``proven_sessions`` 10, o2 goes first, every time it is due, until its own sessions make
    it proven; then the order is least recently tested again."""
    o1, o2, o3 = (Target(f"https://o{i}.test:8935") for i in (1, 2, 3))
    ok = {"outcome": "ok", "duration_s": 10.0}
    rows = ([{**ok, "target_orchestrator": o1.key, "started_unix": T0 - 7200 + i} for i in range(12)]
            + [{**ok, "target_orchestrator": o2.key, "started_unix": T0 - 5400 + i} for i in range(3)]
            + [{"target_orchestrator": o2.key, "started_unix": T0 - 5300 + i, "outcome": "failed",
                "error_phase": "tester", "duration_s": 1.0} for i in range(5)]
            + [{"target_orchestrator": o2.key, "started_unix": T0 - 5200 + i, "outcome": "failed",
                "error_phase": "pipeline", "excused": True, "duration_s": 1.0} for i in range(4)]
            + [{"target_orchestrator": o2.key, "started_unix": T0 - 5100 + i, "outcome": "skipped_no_capacity",
                "duration_s": 0.0} for i in range(6)]
            + [{**ok, "target_orchestrator": o3.key, "started_unix": T0 - 9000 + i} for i in range(10)])
    plain = coverage(every_s=600.0)
    plain.restore(rows, T0)
    assert plain.pick([o1, o2, o3], 64, T0).target == o3            # no priority: least recently tested
    cov = coverage(every_s=600.0, proven_sessions=10)
    cov.restore(rows, T0)
    assert {k: len(v) for k, v in cov.counted.items()} == {o1.key: 12, o2.key: 3, o3.key: 10}
    assert cov.status([o1, o2, o3], 64, T0)["unproven"] == [o2.key]
    picked, t = [], T0
    for _ in range(12):   # o2 is due again every 600 s; each time it goes first while unproven
        pick = cov.pick([o1, o2, o3], 64, t)
        assert pick is not None
        picked.append(pick.target.key)
        sid = f"s{len(picked)}"
        cov.started(sid, pick, t)
        cov.finished(sid, 10.0, t + 10, counts=pick.target != o2 or len(picked) != 2)   # its 2nd did not count
        if pick.target != o2:
            break
        t += 600.0
    # 3 read back + 7 that count (8 sessions, one a failure of ours): proven; then o3, tested longest ago
    assert picked == [o2.key] * 8 + [o3.key] and len(cov.counted[o2.key]) == 10 and cov.proven(o2.key)
    assert cov.status([o1, o2, o3], 64, t)["unproven"] == []


def test_counted_sessions_age_out_of_proven_with_the_days_a_monitor_runs_on():
    """proven_days 2, proven_sessions 2: a session counts on the UTC day it started and the next. Read back
    on day D: one from three days before (never counts) and one from D-1 at noon: unproven. s1 starts on D
    at 23:59:50 and is counted after midnight (it counts for D, its start); s2 starts on D+1 at noon."""
    o1 = Target("https://o1.test:8935")
    d = T0 + 3 * DAY_S                  # a UTC midnight
    cov = coverage(every_s=600.0, proven_sessions=2, proven_days=2)
    ok = {"outcome": "ok", "duration_s": 10.0, "target_orchestrator": o1.key}
    assert cov.restore([{**ok, "started_unix": d - 3 * DAY_S + 60}, {**ok, "started_unix": d - DAY_S / 2}], d) == 2
    assert cov.status([o1], 16, d)["unproven"] == [o1.key]   # D-1's noon only

    def session(sid: str, start: float, end: float) -> None:
        pick = cov.pick([o1], 16, start)
        assert pick is not None and pick.target == o1
        cov.started(sid, pick, start)
        cov.finished(sid, end - start, end, counts=True)

    session("s1", d + DAY_S - 10, d + DAY_S + 1)
    assert cov.status([o1], 16, d + DAY_S + 2)["unproven"] == [o1.key]   # D+1: s1 only (D-1 aged out)
    assert cov.status([o1], 16, d + DAY_S - 28)["unproven"] == []        # the clock back on D: D-1's noon, s1
    session("s2", d + 1.5 * DAY_S, d + 1.5 * DAY_S + 10)
    assert cov.status([o1], 16, d + 1.5 * DAY_S + 20)["unproven"] == []  # D+1: s1 (D), s2
    assert cov.status([o1], 16, d + 2 * DAY_S + 5)["unproven"] == [o1.key]   # D+2: s2 only


class ScanCoverage(Coverage):
    """The pick as it was before the queue (a scan of every target per pick), re-stated here as the reference:
    the rules themselves, not fleet.coverage's code for them (proven: of every counted session it was told
    of, kept here in full, those that started on one of the last ``proven_days`` UTC days by the calendar)."""

    def __post_init__(self):
        super().__post_init__()
        self.every_count = {}

    def _count(self, key, started):
        self.every_count.setdefault(key, []).append(started)

    def _roll(self, now):
        super()._roll(now)
        self.clock_read = now

    def proven(self, key):   # as of the last clock read, as Coverage's
        return self.proven_now(key, self.clock_read)

    def proven_now(self, key, now):
        first_day = dt.datetime.fromtimestamp(now, dt.timezone.utc).date() - dt.timedelta(days=self.proven_days - 1)
        return sum(dt.datetime.fromtimestamp(s, dt.timezone.utc).date() >= first_day
                   for s in self.every_count.get(key, ())) >= self.proven_sessions

    def pick(self, targets, total_slots, now):
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
        inf = float("inf")
        due = [t for t in targets if t.key not in self.last_tested or now - self.last_tested[t.key] >= self.every_s]
        due = [t for t in due if now - self.last_tried.get(t.key, -inf) >= self.retry_s
               or self.last_tried.get(t.key, -inf) <= self.last_tested.get(t.key, -inf)]
        if not due:
            self.why = "nothing is due"
            return None
        target = min(due, key=lambda t: (self.proven_now(t.key, now),
                                         self.last_tested.get(t.key, -inf), t.key))
        return Pick(target, self._category(target.key))


def scan(**kw) -> ScanCoverage:
    return ScanCoverage(**({"every_s": 60.0, "session_s": 10.0, "daily_budget": 0.05, "categories": CATEGORIES} | kw))


KEYS = [f"https://o{i}.test:8935" for i in range(7)]
STEPS = [0.0, 0.1, 0.2, 0.3, 1.0, 2.5, 7.5, 14.999999, 15.0, 15.000001, 20.0, 30.0, 59.99, 60.0, 60.1, 90.0,
         600.0, 3600.0, DAY_S / 3, DAY_S]
target_lists = st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.sampled_from([None, 0, 1, 3])),
                        min_size=0, max_size=9)
steps = st.one_of(st.sampled_from(STEPS), st.floats(0.0, 200.0), st.floats(-50.0, 0.0))
ops = st.one_of(
    st.tuples(st.just("pick"), steps, st.sampled_from(["start", "start", "skip", ""])),
    st.tuples(st.just("pick"), steps, st.sampled_from(["start", "skip", ""])),
    st.tuples(st.just("pick"), steps, st.sampled_from(["start", "skip", ""])),
    st.tuples(st.just("refuse"), st.integers(0, 5)),
    st.tuples(st.just("finish"), st.integers(0, 5), st.booleans(), st.floats(0.0, 20.0)),
    st.tuples(st.just("targets"), target_lists),
    st.tuples(st.just("copy")),
    st.tuples(st.just("restore"), st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.floats(-3 * DAY_S, 10.0),
                                                     st.sampled_from(["ok", "failed", "skipped_no_capacity"]),
                                                     st.sampled_from([None, "pipeline", "tester"])),
                                           max_size=8)),
    st.tuples(st.just("status")),
)


@settings(max_examples=300, deadline=None)
@given(every_s=st.sampled_from([30.0, 60.0, 61.7, 600.0]), retry=st.sampled_from([None, 0.0, 7.3, 45.0]),
       proven=st.integers(0, 3), days=st.sampled_from([1, 2, 7]), budget=st.sampled_from([0.0002, 0.05, 1.0, 1.0]), slots=st.integers(0, 8),
       start=st.floats(0.0, 2 * DAY_S), first=target_lists.filter(bool), script=st.lists(ops, min_size=10, max_size=150))
def test_the_queued_pick_picks_what_the_scan_picked_on_any_history(every_s, retry, proven, days, budget, slots,
                                                                     start, first, script):
    """Random histories of picks, starts, skips, refusals, ends (counted or not), restores from stored rows,
    changed target lists (same keys or not, duplicate keys with different idle slots), clock jumps (back too)
    and UTC day rolls, on the queued Coverage and on the scan it replaced: the same pick, every time."""
    kw = {"every_s": every_s, "session_s": 10.0, "daily_budget": budget, "categories": CATEGORIES,
          "retry_s": retry, "proven_sessions": proven, "proven_days": days}
    cov, ref = Coverage(**kw), ScanCoverage(**kw)

    def listed(spec):
        return [Target(KEYS[i], f"0x{i}", idle) for i, idle in spec]

    targets, now, last, live, n = listed(first), T0 + start, None, [], 0
    for op in script:
        kind = op[0]
        if kind == "pick":
            now += op[1]
            last = cov.pick(targets, slots, now)
            assert last == ref.pick(targets, slots, now) and cov.why == ref.why, (op, now - T0)
            assert last is None or last.target is next(t for t in targets if t.key == last.target.key)
            if last is not None and op[2] == "start":
                n += 1
                live.append(f"s{n}")
                for c in (cov, ref):
                    c.started(live[-1], last, now)
            elif last is not None and op[2] == "skip":
                for c in (cov, ref):
                    c.skipped(last, now)
        elif kind in ("refuse", "finish") and live:
            sid = live.pop(op[1] % len(live))
            if kind == "refuse":
                for c in (cov, ref):
                    c.refused(sid)
                    c.finished(sid, 0.0, now)
            else:
                for c in (cov, ref):
                    c.finished(sid, op[3], now, counts=op[2])
        elif kind == "targets":
            targets = listed(op[1])
        elif kind == "copy":
            targets = list(targets)   # a new list of the same targets, as each capacity read gives
        elif kind == "restore":
            rows = [{"target_orchestrator": KEYS[i], "started_unix": now + dt_, "outcome": outcome,
                     "error_phase": phase, "duration_s": 10.0} for i, dt_, outcome, phase in op[1]]
            used = sum(r["started_unix"] <= now for r in rows)   # every row names its orchestrator: a future one is not
            assert cov.restore(rows, now) == used and ref.restore(rows, now) == used
        elif kind == "status":
            assert cov.status(targets, slots, now) == ref.status(targets, slots, now)
        assert (cov.last_tested, cov.last_tried, cov.last_start) == (ref.last_tested, ref.last_tried, ref.last_start)
        if cov.day:   # the clock read: whether each is proven now, the queue's counts aged against the reference's
            assert [cov.proven(k) for k in KEYS] == [ref.proven(k) for k in KEYS], (op, now - T0)


def test_a_count_that_proves_an_orchestrator_already_due_moves_it_behind_the_unproven():
    """o1 is due and was looked at (filed as due, unproven) when its session's count proves it: the next
    pick takes o2, unproven though tested later, as the scan would."""
    o1, o2 = Target("https://o1.test:8935"), Target("https://o2.test:8935")
    for cov in (coverage(proven_sessions=1), scan(proven_sessions=1)):
        first = cov.pick([o1, o2], 16, T0)
        cov.started("s1", first, T0)
        second = cov.pick([o1, o2], 16, T0 + 30)
        cov.started("s2", second, T0 + 30)
        assert (first.target, second.target) == (o1, o2)
        assert cov.pick([o1, o2], 16, T0 + 60).target == o1        # due again, its session not yet counted
        cov.finished("s1", 10.0, T0 + 60, counts=True)              # ... now it is: o1 is proven
        assert cov.pick([o1, o2], 16, T0 + 90).target == o2, type(cov).__name__


def test_a_clock_that_goes_back_makes_due_what_was_due_then_only():
    """The wall clock may step back (NTP): an orchestrator due at t is not due at t - 20 s if its retry is not
    up then; the queue that filed it as due at t must not return it."""
    o1, o2 = Target("https://o1.test:8935"), Target("https://o2.test:8935")
    for cov in (coverage(retry_s=30.0), scan(retry_s=30.0)):
        cov.skipped(Pick(o1, None), T0)
        cov.skipped(Pick(o2, None), T0 + 10)
        assert cov.pick([o1, o2], 16, T0 + 45).target == o1         # both retried: o1 first, by key
        assert cov.pick([o1, o2], 16, T0 + 25) is None and cov.why == "nothing is due", type(cov).__name__
        assert cov.pick([o1, o2], 16, T0 + 35).target == o1
