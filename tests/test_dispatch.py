"""The campaign's dispatch rules without Ray and without waiting: a fake clock, the real slot broker,
and a fake executor (named so: sessions "run" on the fake clock, in process; the Ray executor is
exercised for real in tests/test_campaign.py). Known plans give known start times, waits and skips."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.capacity import CapacitySnapshot, OrchestratorSlots
from fleet.plan import PlannedSession
from fleet.results.row import SessionRow
from fleet.runtime.broker import SlotBroker
from fleet.runtime.dispatch import STARVE_STEP_S, Clock, Dispatched, Dispatcher, planned_concurrency
from fleet.runtime.executor import Finished
from fleet.runtime.job import Job
from fleet.scenario import CapacityPolicy

POLL_S = 0.2


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.t += s

    def clock(self) -> Clock:
        return Clock(self.monotonic, self.sleep)


class FakeExecutor:
    """A fake executor: a session ends ``runs[index]`` seconds (default: its planned duration) after it
    started, on the fake clock; ``die`` lists sessions whose runner dies (a tester failure)."""

    def __init__(self, clock: FakeClock, broker: SlotBroker, runs: dict[int, float] | None = None,
                 die: tuple[int, ...] = ()) -> None:
        self.clock, self.broker, self.runs, self.die = clock, broker, runs or {}, die
        self.live: dict[str, tuple[float, Dispatched]] = {}
        self.started: dict[int, float] = {}   # session index -> when it started (fake clock)
        self.peak = 0

    def region_for(self, region: str) -> str:
        return region

    def lease(self, region: str, preferred: str | None, duration_s: float, strict: bool = False) -> dict[str, Any] | None:
        lease = self.broker.lease(region, preferred, duration_s, strict)
        return None if lease is None else {"id": lease.id, "orchestrator": lease.orchestrator,
                                           "orchestrator_uri": lease.orchestrator_uri}

    def start(self, region: str, job: Job, lease_id: str, tag: Dispatched) -> None:
        s = tag.session
        lease = self.broker.leases[lease_id]  # the job goes where its lease is, under its own session id
        assert (job.lease_id, job.orchestrator, job.orchestrator_uri) == (lease_id, lease.orchestrator,
                                                                          lease.orchestrator_uri)
        assert job.session_id == f"s{s.index}" and tag.job is job
        self.started[s.index] = self.clock.t
        self.live[lease_id] = (self.clock.t + self.runs.get(s.index, s.duration_s), tag)
        self.peak = max(self.peak, len(self.live))

    def poll(self, timeout: float) -> list[Finished]:
        soonest = min(end for end, _ in self.live.values())
        self.clock.t = min(self.clock.t + timeout, max(self.clock.t, soonest))
        out = []
        for lease_id, (end, tag) in list(self.live.items()):
            if end <= self.clock.t:
                del self.live[lease_id]
                self.broker.release(lease_id)
                if tag.session.index in self.die:
                    out.append(Finished(tag, lease_id, tag.region, error=("runner_died", "RayActorError")))
                else:
                    out.append(Finished(tag, lease_id, tag.region, row=SessionRow(session_id=str(lease_id), outcome="ok")))
        return out


def planned(index: int, start_s: float, duration_s: float, orchestrator: str | None = None) -> PlannedSession:
    return PlannedSession(index, start_s, duration_s, "r1", orchestrator, None, index, ())


def network(slots: int, orchestrators: int = 1, stagger_s: float = 0.0, per_orch: int = 8) -> tuple[SlotBroker, FakeClock]:
    clock = FakeClock()
    snap = CapacitySnapshot("m", tuple(OrchestratorSlots(f"0x{k}", f"https://o{k}:8935", slots, 0)
                                       for k in range(orchestrators)))
    policy = CapacityPolicy(max_fraction=1.0, idle_reserve=0, max_per_orchestrator=per_orch, stagger_s=stagger_s)
    broker = SlotBroker(policy, snap, clock=clock.monotonic)
    broker.update(snap)
    return broker, clock


def job_for(s: PlannedSession, region: str) -> Job:
    return Job(f"s{s.index}", "http://gw", s.duration_s, ())


def run(sessions: list[PlannedSession], ex: FakeExecutor, lease_wait_s: float, max_turns: int = 10_000):
    d = Dispatcher(sessions, ex, lease_wait_s, job_for, ex.clock.clock(),
                   POLL_S)
    ended: dict[int, tuple[float, str]] = {}
    skipped: dict[int, float] = {}
    turns = 0
    while d.busy():
        turns += 1
        assert turns <= max_turns, "the dispatcher did not finish"
        turn = d.step()
        for k in turn.skipped:
            skipped[k.session.index] = d.elapsed()
        for f in turn.finished:
            ended[f.tag.session.index] = (d.elapsed(), "ok" if f.row else f.error[0])
    return d, ended, skipped


def test_with_room_every_session_starts_at_its_planned_time():
    broker, clock = network(slots=4)
    ex = FakeExecutor(clock, broker)
    sessions = [planned(i, 1.0 * i, 3.0) for i in range(6)]
    d, ended, skipped = run(sessions, ex, lease_wait_s=5.0)
    t0 = d.t0
    assert not skipped and sorted(ended) == list(range(6))
    for s in sessions:  # started within one poll of its planned start, never before
        assert 0 <= ex.started[s.index] - t0 - s.start_s <= POLL_S + 1e-9
    assert ex.peak == 3 and not broker.leases  # every lease given back


def test_a_due_session_waits_first_come_first_served_and_starts_when_a_slot_frees():
    broker, clock = network(slots=1)
    ex = FakeExecutor(clock, broker)
    sessions = [planned(0, 0.0, 4.0), planned(1, 1.0, 4.0), planned(2, 1.5, 4.0)]
    d, ended, skipped = run(sessions, ex, lease_wait_s=10.0)
    t0 = d.t0
    assert not skipped and ex.peak == 1
    assert ex.started[1] - t0 == pytest.approx(4.0, abs=POLL_S) and ex.started[2] - t0 == pytest.approx(8.0, abs=POLL_S)


def test_a_session_that_waits_longer_than_lease_wait_is_skipped_at_that_moment():
    broker, clock = network(slots=1)
    ex = FakeExecutor(clock, broker)
    sessions = [planned(0, 0.0, 10.0), planned(1, 1.0, 10.0)]
    d, ended, skipped = run(sessions, ex, lease_wait_s=3.0)
    assert list(skipped) == [1] and 1 not in ex.started
    assert skipped[1] == pytest.approx(1.0 + 3.0, abs=2 * POLL_S)  # due at 1 s, waited 3 s
    assert ended == {0: (pytest.approx(10.0, abs=POLL_S), "ok")}


def test_our_own_overrun_is_no_shortage_nobody_starves_behind_it():
    """Session 0 is planned 0-5 s but runs 12 s; session 1 is planned from 5 s. The plan has one
    session running at a time, so the wait behind our own overrun is not counted: 1 starts at 12 s
    although that is more than lease_wait_s after it was due."""
    broker, clock = network(slots=1)
    ex = FakeExecutor(clock, broker, runs={0: 12.0})
    sessions = [planned(0, 0.0, 5.0), planned(1, 5.0, 5.0)]
    d, ended, skipped = run(sessions, ex, lease_wait_s=2.0)
    assert not skipped and ex.started[1] - d.t0 == pytest.approx(12.0, abs=POLL_S)


def test_a_slow_dispatch_pass_counts_as_at_most_the_starve_step():
    """A pass stalled 30 s (the driver's own delay) adds STARVE_STEP_S to a waiting session, not 30 s."""
    broker, clock = network(slots=1)
    ex = FakeExecutor(clock, broker)
    d = Dispatcher([planned(0, 0.0, 100.0), planned(1, 0.0, 100.0)], ex, 5.0, job_for, clock.clock(), POLL_S)
    d.step()
    clock.t += 30.0  # the driver stalled
    turn = d.step()
    assert not turn.skipped and d.waiting[0][1] <= STARVE_STEP_S + POLL_S


def test_the_stagger_spreads_starts_on_one_orchestrator():
    broker, clock = network(slots=4, stagger_s=2.0)
    ex = FakeExecutor(clock, broker)
    sessions = [planned(i, 0.0, 10.0) for i in range(3)]
    d, ended, skipped = run(sessions, ex, lease_wait_s=30.0)
    starts = sorted(t - d.t0 for t in ex.started.values())
    assert not skipped and all(b - a >= 2.0 - 1e-9 for a, b in zip(starts, starts[1:]))


def test_a_session_lost_to_its_runner_hands_its_slot_to_the_session_waiting_for_it():
    """One slot. Session 1 is due at 1 s while session 0 holds the slot until its runner dies at 2 s (the
    executor gives the lease back, as RayExecutor does; tests/test_cluster.py proves that on real Ray). The
    dispatcher must keep session 1 waiting, not skip it, and start it within one poll of the slot coming free;
    the lost session is handed on as the failure it was, not counted as a run."""
    broker, clock = network(slots=1)
    ex = FakeExecutor(clock, broker, die=(0,))
    d, ended, skipped = run([planned(0, 0.0, 2.0), planned(1, 1.0, 2.0)], ex, lease_wait_s=5.0)
    assert not skipped and ended[0] == (pytest.approx(2.0, abs=POLL_S), "runner_died")
    assert 2.0 <= ex.started[1] - d.t0 <= 2.0 + POLL_S + 1e-9 and ended[1][1] == "ok"
    assert ex.peak == 1 and not broker.leases


def test_the_plans_concurrency_counts_sessions_running_at_t():
    at = planned_concurrency([planned(0, 0.0, 5.0), planned(1, 2.0, 5.0), planned(2, 6.0, 1.0)])
    assert [at(t) for t in (0.0, 1.0, 2.0, 5.0, 6.5, 7.0, 8.0)] == [1, 1, 2, 1, 2, 0, 0]
