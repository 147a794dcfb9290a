"""The campaign planner: scenario + capacity snapshot + seed -> a deterministic plan.

Pure (no Ray, no network, no clock, no file: the prompts come resolved). It
simulates the scenario's load shape in integer milliseconds, in time order,
and places each requested session only where every cap holds at its start.
The capacity caps are ``fleet.rules``, the same code the slot broker runs live:

- concurrent test streams <= the budget: floor(max_fraction x total slots),
  and never into the idle reserve;
- per orchestrator: <= max_per_orchestrator and <= its idle slots, and starts
  at least ``stagger_s`` apart (anonymous slots, whose orchestrator the gateway
  chooses, are staggered as if they were one orchestrator);
- per region: <= its ``max_concurrent`` (the planner's own rule: regions are
  where the fleet's testers run, not network capacity);
- every session ends by the campaign cap and lasts <= session.max_s.

A request that cannot be placed waits (closed loop: while its virtual user is
active; open loop: up to ``max_wait_s``) and is otherwise recorded as skipped,
never as anyone's failure. Because sessions only ever start at the current
simulated time, checking the caps at each start proves them for all time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fleet.capacity import CapacitySnapshot
from fleet.planslots import Slot as _Slot
from fleet.planslots import SlotOrder, expire
from fleet.prompts import PoolEntry, PromptPicker
from fleet.rules import CapacityRules
from fleet.scenario import (ArrivalsLoad, ExponentialDuration, FixedDuration, LognormalDuration, RampLoad,
                            Scenario, Stage, StagesLoad, UniformDuration)

__all__ = ["Plan", "PlannedSession", "PromptStep", "Skipped", "make_plan", "prompt_schedule"]

MS = 1000


@dataclass(frozen=True)
class PromptStep:
    at_s: float
    set: str
    prompt_id: str
    category: str


@dataclass(frozen=True)
class PlannedSession:
    index: int
    start_s: float
    duration_s: float
    region: str
    orchestrator: str | None  # address; None: the gateway chooses
    orchestrator_uri: str | None
    seed: int
    prompts: tuple[PromptStep, ...]

    @property
    def end_s(self) -> float:
        return round(self.start_s + self.duration_s, 3)


@dataclass(frozen=True)
class Skipped:
    at_s: float
    reason: str


@dataclass(frozen=True)
class Plan:
    scenario: str
    scenario_hash: str
    seed: int
    capacity: dict[str, Any]
    budget: int
    window_s: float
    end_s: float
    sessions: tuple[PlannedSession, ...]
    skipped: tuple[Skipped, ...]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def max_concurrency(self) -> int:
        events = sorted([(s.start_s, 1) for s in self.sessions] + [(s.end_s, -1) for s in self.sessions],
                        key=lambda e: (e[0], e[1]))
        level = peak = 0
        for _, delta in events:
            level += delta
            peak = max(peak, level)
        return peak


@dataclass
class _Request:
    first_ms: int
    deadline_ms: int
    duration_ms: int
    user: int | None  # closed-loop virtual user, None for an open-loop arrival


class _Planner:
    def __init__(self, scenario: Scenario, snapshot: CapacitySnapshot, seed: int, pool: list[PoolEntry]) -> None:
        self.sc = scenario
        self.load = scenario.load
        self.seed = seed
        self.rules = CapacityRules(scenario.capacity, ticks_per_s=MS)
        self.budget = self.rules.budget(snapshot)
        self.end = int(self.load.end_s * MS)
        self.window = min(int(self.load.window_s * MS), self.end)
        places, notes = self.rules.places(snapshot)
        random.Random(f"orchestrators:{seed}").shuffle(places)
        self.order = SlotOrder(places, self.rules)   # fleet.planslots: not a scan of every slot per session
        self.slots = self.order.slots
        self.notes: list[str] = list(snapshot.notes) + notes
        room = sum(s.place.most for s in self.slots)
        self.cap = min(self.budget, room)
        pol = scenario.capacity
        self.cap_why = (f"capacity.max_fraction {pol.max_fraction:g} of {snapshot.total} slots, never into the last "
                        f"{pol.idle_reserve} idle" if self.budget <= room else
                        f"{len(self.slots)} eligible orchestrator(s), each at most capacity.max_per_orchestrator = "
                        f"{pol.max_per_orchestrator} or its idle slots")
        if isinstance(self.load, ArrivalsLoad) and self.load.max_concurrency < self.cap:
            self.cap, self.cap_why = self.load.max_concurrency, "load.max_concurrency"
        self.running: list[int] = []  # end times of every running session (a heap, as every list of ends here)
        self.regions = [(r.name, r.weight, r.max_concurrent) for r in scenario.placement.regions]
        self.region_running: dict[str, list[int]] = {r[0]: [] for r in self.regions}
        self.region_credit = {r[0]: 0.0 for r in self.regions}
        self.durations = random.Random(f"durations:{seed}")
        self.seeds = random.Random(f"seeds:{seed}")
        self.picker = PromptPicker(pool, scenario.prompts.selection, seed)
        self.sessions: list[PlannedSession] = []
        self.skipped: list[Skipped] = []

    # --- demand ---------------------------------------------------------------

    def _draw_ms(self) -> int:
        d = self.load.session.duration
        if isinstance(d, FixedDuration):
            s = d.s
        elif isinstance(d, UniformDuration):
            s = self.durations.uniform(d.min_s, d.max_s)
        elif isinstance(d, ExponentialDuration):
            s = self.durations.expovariate(1.0 / d.mean_s)
        elif isinstance(d, LognormalDuration):
            s = d.median_s * math.exp(d.sigma * self.durations.gauss(0.0, 1.0))
        else:  # pragma: no cover - the model admits no other kind
            raise AssertionError(d)
        return int(min(s, self.load.session.max_s) * MS)

    def _stages(self) -> list[tuple[int, int, int]]:
        """(start_ms, end_ms, concurrency) for closed-loop shapes."""
        if isinstance(self.load, StagesLoad):
            stages: list[Stage] = list(self.load.stages)
        elif isinstance(self.load, RampLoad):
            stages = self.load.stages()
        else:
            raise AssertionError("open-loop arrivals have no stages")
        out, t = [], 0
        for st in stages:
            end = t + int(st.duration_s * MS)
            if t < self.window:
                out.append((t, min(end, self.window), st.concurrency))
            t = end
        return out

    def _active_period(self, stages: list[tuple[int, int, int]], user: int, t: int) -> tuple[int, int] | None:
        """The first period at or after ``t`` in which ``user`` is active: (from, until)."""
        start = None
        for a, b, level in stages:
            if b <= t:
                continue
            if user < level:
                if start is None:
                    start = max(a, t)
                until = b
            elif start is not None:
                return start, until
        return (start, until) if start is not None else None

    def _arrivals(self) -> list[int]:
        load = self.load
        assert isinstance(load, ArrivalsLoad)
        rng = random.Random(f"arrivals:{self.seed}")
        gap = 60.0 / load.rate_per_min
        times, t = [], 0.0
        for _ in range(1_000_000):
            t_ms = int(t * MS)
            if t_ms >= self.window:
                break
            times.append(t_ms)
            t += rng.expovariate(1.0 / gap) if load.process == "poisson" else gap
        return times

    # --- placement ------------------------------------------------------------

    @staticmethod
    def _expire(ends: list[int], t: int) -> None:
        expire(ends, t)

    def _free_slot(self, t: int) -> _Slot | None:
        return self.order.free(t)

    def _region(self, t: int) -> str | None:
        """Smooth weighted round-robin over the regions with room."""
        open_ = []
        for name, weight, limit in self.regions:
            self._expire(self.region_running[name], t)
            if limit is None or len(self.region_running[name]) < limit:
                open_.append((name, weight))
        if not open_:
            return None
        total = sum(w for _, w in open_)
        for name, w in open_:
            self.region_credit[name] += w
        chosen = max(open_, key=lambda nw: self.region_credit[nw[0]])[0]
        self.region_credit[chosen] -= total
        return chosen

    def _next_change(self, t: int) -> int | None:
        """The next session end or stagger expiry after ``t``."""
        self._expire(self.running, t)
        times = self.running[:1]
        stagger = self.order.next_stagger(t)
        if stagger is not None:
            times.append(stagger)
        return min(times, default=None)

    def _why(self, t: int) -> str:
        if not self.slots:
            return "no eligible orchestrator has idle slots"
        if self.cap == 0:
            return "capacity budget is 0 slots (max_fraction x total, less the idle reserve)"
        if len(self.running) >= self.cap:
            return f"campaign at its cap of {self.cap} concurrent streams ({self.cap_why})"
        for slot in self.slots:
            self._expire(slot.running, t)
        roomy = [s for s in self.slots if self.rules.has_room(s.place, len(s.running), len(s.running))]
        if not roomy:
            return (f"every eligible orchestrator is at its limit (capacity.max_per_orchestrator = "
                    f"{self.sc.capacity.max_per_orchestrator}, or its idle slots)")
        stagger = f"capacity.stagger_s = {self.sc.capacity.stagger_s:g} s"
        if all(s.place.key is None for s in roomy):
            return f"no orchestrators known: every start waits {stagger} after the last one"
        return f"every eligible orchestrator with room started a session less than {stagger} ago"

    def _duration_at(self, t: int, req: _Request) -> int | None:
        """The request's length if it starts at ``t`` (cut at the campaign end); None if too short to start."""
        duration = min(req.duration_ms, self.end - t)
        return duration if duration >= int(self.load.session.min_s * MS) else None

    def _try_start(self, t: int, req: _Request) -> int | None:
        """Start a session at ``t`` if every cap allows; return its end (ms)."""
        duration = self._duration_at(t, req)
        if duration is None:
            return None
        self._expire(self.running, t)
        if len(self.running) >= self.cap:
            return None
        slot = self._free_slot(t)
        if slot is None:
            return None
        region = self._region(t)
        if region is None:
            return None
        end = t + duration
        for ends in (self.running, self.region_running[region]):
            heapq.heappush(ends, end)
        self.order.started(slot, t, end)
        self.sessions.append(PlannedSession(
            index=len(self.sessions), start_s=t / MS, duration_s=duration / MS, region=region,
            orchestrator=slot.place.address or None, orchestrator_uri=slot.place.uri or None,
            seed=self.seeds.randrange(2**31), prompts=self._schedule(duration)))
        return end

    def _schedule(self, duration_ms: int) -> tuple[PromptStep, ...]:
        return prompt_schedule(self.sc, duration_ms / MS, self.picker)

    # --- the simulation -----------------------------------------------------------

    def run(self) -> None:
        queue: list[tuple[int, int, _Request]] = []
        seq = 0

        def push(t: int, req: _Request) -> None:
            nonlocal seq
            heapq.heappush(queue, (t, seq, req))
            seq += 1

        stages: list[tuple[int, int, int]] = []
        if isinstance(self.load, ArrivalsLoad):
            wait = int(self.load.max_wait_s * MS)
            for t in self._arrivals():
                push(t, _Request(t, t + wait, self._draw_ms(), None))
        else:
            stages = self._stages()
            for user in range(max((lvl for _, _, lvl in stages), default=0)):
                period = self._active_period(stages, user, 0)
                if period:
                    push(period[0], _Request(period[0], period[1], self._draw_ms(), user))

        for _ in range(10_000_000):
            if not queue:
                break
            t, _, req = heapq.heappop(queue)
            end = self._try_start(t, req) if t < self.window else None
            if end is not None:
                follow = (end, req.user)
            else:
                change = self._next_change(t)
                if t < self.window and change is not None and change <= min(req.deadline_ms, self.window - 1):
                    push(change, req)
                    continue
                if t < self.window and self._duration_at(t, req) is not None:
                    self.skipped.append(Skipped(req.first_ms / MS, self._why(t)))
                follow = (max(t, req.deadline_ms), req.user)
            next_t, who = follow
            if who is not None and next_t < self.window:
                period = self._active_period(stages, who, next_t)
                if period:
                    push(period[0], _Request(period[0], period[1], self._draw_ms(), who))


def prompt_schedule(scenario: Scenario, duration_s: float, picker: PromptPicker) -> tuple[PromptStep, ...]:
    """A session's prompts: the first at 0 s, then one per switch of ``prompts.switch`` within its length, each
    drawn by ``picker`` (``prompts.selection``) and never the same prompt twice in a row. The plan and the
    monitor both schedule prompts with it."""
    switch = scenario.prompts.switch
    duration_ms = int(round(duration_s * MS))
    at = [0]
    if switch is not None and switch.every_s is not None:
        step = int(switch.every_s * MS)
        at += list(range(step, duration_ms, step))
    elif switch is not None:
        at += [int(a * MS) for a in switch.at_s if int(a * MS) < duration_ms]
    steps: list[PromptStep] = []
    for a in at:
        e = picker.next(avoid=steps[-1].prompt_id if steps else None)
        steps.append(PromptStep(a / MS, e.set_name, e.prompt.id, e.prompt.category))
    return tuple(steps)


def make_plan(scenario: Scenario, snapshot: CapacitySnapshot, seed: int = 0, *, pool: list[PoolEntry]) -> Plan:
    """The deterministic session plan for ``scenario`` on ``snapshot``, with the prompts of ``pool``
    (``fleet.prompts.resolve_pool``, read before planning); same inputs, same plan."""
    planner = _Planner(scenario, snapshot, seed, pool)
    planner.run()
    plan = Plan(
        scenario=scenario.name, scenario_hash=scenario.digest(), seed=seed, capacity=snapshot.summary(),
        budget=planner.cap, window_s=planner.window / MS, end_s=planner.end / MS,
        sessions=tuple(planner.sessions), skipped=tuple(planner.skipped), notes=tuple(planner.notes))
    short = _shortfall(scenario, plan)
    return plan if short is None else replace(plan, notes=(*plan.notes, short))


def _shortfall(scenario: Scenario, plan: Plan) -> str | None:
    """When the plan reaches less concurrency than the load asks for, the rule that held it back most."""
    load = scenario.load
    asked = (load.max_concurrency if isinstance(load, ArrivalsLoad)
             else max(s.concurrency for s in (load.stages() if isinstance(load, RampLoad) else load.stages)))
    peak = plan.max_concurrency()
    if peak >= asked or not plan.skipped:
        return None
    reasons = Counter(k.reason for k in plan.skipped)
    reason, n = reasons.most_common(1)[0]
    return f"the load asks for {asked} concurrent sessions, the plan reaches {peak}: {reason} ({n} skipped for it)"
