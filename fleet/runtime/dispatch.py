"""Following a plan in time: the campaign's dispatch rules, free of Ray and of the wall clock.

A session that is due joins a first-come-first-served queue for a lease. The head of the queue is
leased a slot and started on its region's executor as soon as the broker grants one; a session that
has waited ``lease_wait_s`` is skipped (``skipped_no_capacity``). Waiting counts only while our own
live sessions are below the plan's concurrency at that moment: when sessions that ran past their
planned end hold the slots, the queue waits for them and nobody starves. A pass of the loop slower
than ``STARVE_STEP_S`` counts as at most that much waiting (our own delay is not the network's).

``Dispatcher`` needs an ``Executor`` (``fleet.runtime.executor.RayExecutor`` on Ray; an in-process
one in tests/test_dispatch.py) and a ``Clock``; the campaign (``fleet.runtime.campaign``) turns
what each step returns into result rows, and decides when to stop.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.plan import PlannedSession
from fleet.runtime.executor import Finished
from fleet.runtime.job import Job

__all__ = ["Clock", "Dispatched", "Dispatcher", "Executor", "SYSTEM_CLOCK", "Turn", "planned_concurrency"]

POLL_S = 0.2
STARVE_STEP_S = 2 * POLL_S  # at most this much of one dispatch pass counts as a due session's wait


@dataclass(frozen=True)
class Clock:
    monotonic: Callable[[], float]
    sleep: Callable[[float], None]
    wall: Callable[[], float] = time.time   # the UTC day and the stored times (the monitor's coverage)


SYSTEM_CLOCK = Clock(time.monotonic, time.sleep)


class Executor(Protocol):
    """Where sessions run: leases from the slot broker, a runner per region, sessions in flight."""

    @property
    def live(self) -> Sized: ...
    def region_for(self, region: str) -> str: ...
    def lease(self, region: str, preferred: str | None, duration_s: float,
              strict: bool = False) -> dict[str, Any] | None: ...
    def start(self, region: str, job: Job, lease_id: str, tag: Any) -> None: ...
    def poll(self, timeout: float) -> list[Finished]: ...

    def evidence(self, preferred: str | None) -> dict[str, Any]: ...


@dataclass
class Dispatched:
    """A planned session and what it became: its job, its lease ("" when it got none), its region."""

    session: PlannedSession
    job: Job
    lease_id: str
    region: str


@dataclass
class Turn:
    """What one pass of the dispatcher did."""

    started: list[Dispatched] = field(default_factory=list)
    skipped: list[Dispatched] = field(default_factory=list)   # waited lease_wait_s for a slot in vain
    finished: list[Finished] = field(default_factory=list)   # tags are the Dispatched that started them


def planned_concurrency(sessions: Sequence[PlannedSession]) -> Callable[[float], int]:
    """t -> how many sessions the plan has running at t."""
    starts = sorted(s.start_s for s in sessions)
    ends = sorted(s.end_s for s in sessions)
    return lambda t: bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)


class Dispatcher:
    def __init__(self, sessions: Sequence[PlannedSession], executor: Executor, lease_wait_s: float,
                 job_for: Callable[[PlannedSession, str], Job], clock: Clock = SYSTEM_CLOCK,
                 poll_s: float = POLL_S) -> None:
        self.ex, self.lease_wait_s, self.job_for, self.clock, self.poll_s = \
            executor, lease_wait_s, job_for, clock, poll_s
        self.pending = deque(sorted(sessions, key=lambda s: s.start_s))
        self.waiting: deque[list[Any]] = deque()  # [session, starved s]: due, waiting for a lease
        self.planned_now = planned_concurrency(sessions)
        self.t0 = clock.monotonic()
        self.last = 0.0

    def begin(self) -> None:
        """The plan's clock starts now (once the runners are up)."""
        self.t0 = self.clock.monotonic()

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.t0

    def busy(self) -> bool:
        """Sessions still to start, waiting, or live."""
        return bool(self.pending or self.waiting or len(self.ex.live))

    def step(self) -> Turn:
        """Queue what is due, lease and start from the head of the queue, skip who waited too long, then
        collect what finished (waiting up to ``poll_s``, or sleeping until the next start)."""
        turn = Turn()
        now = self.elapsed()
        while self.pending and self.pending[0].start_s <= now:
            self.waiting.append([self.pending.popleft(), 0.0])
        live = len(self.ex.live)
        if self.waiting and (not live or live < self.planned_now(now)):
            for w in self.waiting:
                w[1] += min(now - self.last, STARVE_STEP_S)
        self.last = now
        while self.waiting:
            started = self._start(self.waiting[0][0])
            if started is None:
                break
            self.waiting.popleft()
            turn.started.append(started)
        while self.waiting and self.waiting[0][1] > self.lease_wait_s:
            s = self.waiting.popleft()[0]
            region = self.ex.region_for(s.region)
            turn.skipped.append(Dispatched(s, self.job_for(s, region), "", region))
        if len(self.ex.live):
            turn.finished = self.ex.poll(self.poll_s)
        else:
            gap = self.pending[0].start_s - self.elapsed() if self.pending and not self.waiting else self.poll_s
            self.clock.sleep(min(self.poll_s, max(0.0, gap)))
        return turn

    def _start(self, s: PlannedSession) -> Dispatched | None:
        region = self.ex.region_for(s.region)
        lease = self.ex.lease(region, s.orchestrator, s.duration_s)
        if lease is None:
            return None
        job = self.job_for(s, region).leased(lease)
        d = Dispatched(s, job, lease["id"], region)
        self.ex.start(region, job, lease["id"], d)
        return d
