"""The control plane at network size: the real dispatcher, slot broker and coverage rules on a simulated clock.

What runs is the code ``fleet run`` and ``fleet monitor`` run, minus Ray and the network:

- ``fleet.runtime.dispatch.Dispatcher`` follows a campaign of ``--sessions-per-hour`` Poisson arrivals (half
  of them naming an orchestrator, as a plan does), each leasing its slot from the one
  ``fleet.runtime.broker.SlotBroker``;
- the monitor's own source, ``fleet.runtime.monitor.CoverageSource`` (its step and its handling of ended
  sessions, on the simulated clock it is given), asks ``fleet.coverage.Coverage`` what to test next over every
  orchestrator and leases it strictly through the same broker (one broker for both: the caps are the fleet's);
  its status line comes once a simulated hour (``fleet monitor``'s: every minute);
- ``FakeNetwork`` (a fake, named so) is ``--orchestrators`` orchestrators with a mix of GPUs and slots, other
  users whose load follows the day and wanders, some orchestrators full all day, some refusing every session;
  the broker re-reads its snapshot every ``CAPACITY_REFRESH_S``, as ``BrokerActor`` does;
- ``FakeExecutor`` (a fake, named so) "runs" each session on the simulated clock: its stream exists
  ``ATTACH_S`` after the lease (``SlotBroker.attach``), it is refused by a refusing or (by now) full
  orchestrator, else it ends at its length and its lease is released.

``CapChecker`` judges the broker with its own code, from the fake executor's record of the live leases and the
snapshot the broker held at that moment, never with ``fleet.rules``: the share of the network's slots, the
idle reserve, the per-orchestrator cap (count and room), the stagger and the monitor's daily budget. Counting
caps are checked at every grant and on every simulated second (the per-orchestrator counts of the
orchestrators that changed since the last second: the others' counts were checked unchanged); the room caps
(reserve, an orchestrator's idle slots) at every grant, against the snapshot then held. The first breach is
printed and the exit code is 1.

    python bench/control_plane.py [--orchestrators 1000] [--sessions-per-hour 10000] [--hours 24] [--seed 1]

First it plans (``fleet.plan.make_plan``) ``--plan-hours`` of the same campaign on the network's first snapshot and on
the baseline's, and prints the planner's CPU per requested session and its ratio. Then it prints a line per
simulated hour and, last, one JSON object: CPU per dispatched session and per simulated hour,
that as a % of one core per real-time hour of the network, peak memory, and the same per-session figure for a
``--baseline-orchestrators`` network (its sessions per hour scaled to its size) over ``--baseline-hours`` in the
same run: their ratio shows a per-session cost that grows with the network. CPU is ``time.process_time``; the
control plane's share excludes what the fake network and the checker spend (timed apart), and includes the fake
executor's small bookkeeping (an upper bound).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import platform
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.capacity import CapacitySnapshot, OrchestratorSlots  # noqa: E402
from fleet.coverage import Coverage  # noqa: E402
from fleet.plan import PlannedSession, make_plan  # noqa: E402
from fleet.prompts import PoolEntry, Prompt  # noqa: E402
from fleet.results.row import SessionRow  # noqa: E402
from fleet.runtime.broker import Lease, SlotBroker  # noqa: E402
from fleet.runtime.dispatch import Clock, Dispatcher  # noqa: E402
from fleet.runtime.executor import Finished  # noqa: E402
from fleet.runtime.job import Job  # noqa: E402
from fleet.runtime.lifecycle import Campaign, CampaignOptions  # noqa: E402
from fleet.runtime.monitor import CoverageSource, MonitorOptions  # noqa: E402
from fleet.scenario import CapacityPolicy, Scenario  # noqa: E402

HOUR_S = 3600.0
DAY_S = 86_400.0
DAY0_UNIX = 1_788_393_600.0     # a UTC midnight: the simulated day is one monitor day
MODEL = "streamdiffusion"
REGIONS = ("us-east-1a", "eu-west-1")
GPU_MIX = (("NVIDIA GeForce RTX 4090", 2, 0.45), ("NVIDIA RTX A6000", 3, 0.2),
           ("NVIDIA A100-SXM4-80GB", 4, 0.25), ("NVIDIA H100 80GB HBM3", 8, 0.1))   # (GPU, slots, share)
FULL_SHARE = 0.08          # orchestrators whose other users hold every slot all day
REFUSING_SHARE = 0.03      # orchestrators that show idle slots but refuse every session at the gateway
PREFERRED_SHARE = 0.5      # campaign sessions that name an orchestrator (the broker falls back when it is busy)
ATTACH_S = 2.0             # from the lease to the stream existing at the gateway (signaling)
CAPACITY_REFRESH_S = 30.0  # the broker re-reads capacity this often (GatewayCapacity.refresh_s's default)
LOAD_CHANGE_S = 60.0       # other users' load moves this often ...
LOAD_CHANGE_SHARE = 0.2    # ... on this share of the orchestrators
POLL_S = 0.2               # the dispatcher's and the monitor's poll (fleet.runtime.dispatch / monitor)
POLICY = CapacityPolicy(max_fraction=0.05, idle_reserve=20, max_per_orchestrator=1, stagger_s=30.0,
                        lease_wait_s=30.0)
MONITOR_EVERY_S = 3600.0
MONITOR_SESSION_S = 30.0
MONITOR_BUDGET = 0.003     # of the network's slot-seconds per day: a day of hourly coverage spends ~90 % of it
EPS = 1e-9


class CapBreach(Exception):
    """A cap the checker saw broken (the bench's own finding, not a fleet error)."""


# --- the fake network ---------------------------------------------------------------------------------------

@dataclass
class _Orch:
    address: str
    uri: str
    gpu: str
    slots: int
    base: float              # its other users' typical share of its slots
    kind: str                # "ok", "full" or "refusing"
    others: int = 0          # slots other users hold now
    ours: int = 0            # our streams that exist at the gateway now
    shown: OrchestratorSlots | None = None   # its row in the last snapshot (rebuilt only when it changed)


class FakeNetwork:
    """A fake network (no gateway, no orchestrators): slots per orchestrator, other users, our streams."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.rng = rng
        gpus = [g for g, _, _ in GPU_MIX]
        slots = {g: s for g, s, _ in GPU_MIX}
        self.orchs: list[_Orch] = []
        for i in range(n):
            gpu = rng.choices(gpus, weights=[w for _, _, w in GPU_MIX])[0]
            u = rng.random()
            kind = "full" if u < FULL_SHARE else "refusing" if u < FULL_SHARE + REFUSING_SHARE else "ok"
            self.orchs.append(_Orch(f"0x{i:040x}", f"https://o{i}.example:8935", gpu, slots[gpu],
                                    rng.uniform(0.1, 0.8), kind))
        self.by_key = {o.uri: o for o in self.orchs}
        for o in self.orchs:
            self._move(o, 0.0)

    def total(self) -> int:
        return sum(o.slots for o in self.orchs)

    def _move(self, o: _Orch, t: float) -> None:
        """Other users' load on ``o`` now: the day's curve, noise, never into a slot our streams hold."""
        if o.kind == "full":
            want = o.slots
        else:
            day = 0.75 + 0.25 * math.sin(2 * math.pi * (t / DAY_S - 0.3))
            want = round(o.slots * min(1.0, max(0.0, o.base * day + self.rng.gauss(0.0, 0.15))))
        o.others = max(0, min(want, o.slots - o.ours))

    def change(self, t: float) -> None:
        for o in self.rng.sample(self.orchs, max(1, int(len(self.orchs) * LOAD_CHANGE_SHARE))):
            self._move(o, t)

    def snapshot(self, t: float = 0.0) -> CapacitySnapshot:
        """What ``getNetworkCapabilities`` would show at ``t`` (our existing streams are in use)."""
        for o in self.orchs:
            idle, in_use = o.slots - o.others - o.ours, o.others + o.ours
            if o.shown is None or o.shown.idle != idle or o.shown.in_use != in_use:
                o.shown = OrchestratorSlots(o.address, o.uri, idle, in_use, (("0", o.gpu),), warm=True)
        return CapacitySnapshot(MODEL, tuple(o.shown for o in self.orchs if o.shown is not None), source="gateway",
                                read_unix=DAY0_UNIX + t)   # stamped, as fleet.runtime.broker.read_capacity does


# --- the checker: the caps, judged by code the broker does not share ---------------------------------------

@dataclass
class _Held:
    key: str
    granted: float
    monitor: bool
    attached: float | None = None


@dataclass
class CapChecker:
    """Every cap, from the live leases the fake executor records and the snapshot the broker holds."""

    policy: CapacityPolicy
    daily_budget: float
    live: dict[str, _Held] = field(default_factory=dict)
    per_key: Counter[str] = field(default_factory=Counter)
    unseen: dict[str, int] = field(default_factory=dict)   # per orchestrator: live leases the snapshot cannot show
    unseen_all: int = 0
    last_grant: dict[str, float] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    total: int = 0
    idle: int = 0
    idle_of: dict[str, int] = field(default_factory=dict)
    snap_at: float = -math.inf
    monitor_day: int = -1
    monitor_used: float = 0.0          # slot-seconds of today's ended monitor sessions
    monitor_live: dict[str, float] = field(default_factory=dict)   # lease id -> granted
    monitor_peak_share: float = 0.0    # the most of a day's budget the monitor held
    grants: int = 0
    seconds: int = 0
    peak: int = 0
    first: str | None = None

    def _breach(self, t: float, what: str) -> None:
        if self.first is None:
            self.first = f"t={t:.3f} s: {what}"
        raise CapBreach(self.first)

    def _most(self) -> int:
        return int(self.policy.max_fraction * self.total + EPS)

    def snapshot(self, snap: CapacitySnapshot, at: float) -> None:
        self.snap_at, self.idle_of = at, {}
        idle = total = 0
        for o in snap.orchestrators:
            idle += o.idle
            total += o.idle + o.in_use
            self.idle_of[o.uri] = o.idle
        self.total, self.idle = total, idle
        self.unseen = {}
        for h in self.live.values():
            if h.attached is None or h.attached >= at:   # not yet a stream when the snapshot was read
                self.unseen[h.key] = self.unseen.get(h.key, 0) + 1
        self.unseen_all = sum(self.unseen.values())

    def granted(self, lease_id: str, key: str | None, t: float, monitor: bool) -> None:
        self.grants += 1
        if key is None:
            self._breach(t, f"lease {lease_id} names no orchestrator on a snapshot that names every one")
        last = self.last_grant.get(key)
        if last is not None and t - last < self.policy.stagger_s - EPS:
            self._breach(t, f"stagger: two starts on {key} {t - last:.3f} s apart (< {self.policy.stagger_s:g} s)")
        self.last_grant[key] = t
        self.live[lease_id] = _Held(key, t, monitor)
        if monitor:
            self.monitor_live[lease_id] = t
        self.per_key[key] += 1
        self.touched.add(key)
        self.unseen[key] = self.unseen.get(key, 0) + 1
        self.unseen_all += 1
        self.peak = max(self.peak, len(self.live))
        if len(self.live) > self._most():
            self._breach(t, f"max_fraction: {len(self.live)} live leases > {self.policy.max_fraction:g} x "
                            f"{self.total} slots")
        if self.per_key[key] > self.policy.max_per_orchestrator:
            self._breach(t, f"max_per_orchestrator: {self.per_key[key]} live leases on {key}")
        if self.unseen[key] > self.idle_of.get(key, 0):
            self._breach(t, f"room: {self.unseen[key]} lease(s) on {key} the snapshot cannot show, "
                            f"{self.idle_of.get(key, 0)} idle slot(s) in it")
        if self.unseen_all > self.idle - self.policy.idle_reserve:
            self._breach(t, f"idle_reserve: {self.unseen_all} lease(s) beyond the snapshot's view leave "
                            f"{self.idle - self.unseen_all} of its {self.idle} idle slots (< {self.policy.idle_reserve})")

    def attached(self, lease_id: str, t: float) -> None:
        h = self.live.get(lease_id)
        if h is not None:
            h.attached = t

    def released(self, lease_id: str, t: float) -> None:
        h = self.live.pop(lease_id)
        self.per_key[h.key] -= 1
        self.touched.add(h.key)
        if h.attached is None or h.attached >= self.snap_at:
            self.unseen[h.key] -= 1
            self.unseen_all -= 1
        if h.monitor:
            del self.monitor_live[lease_id]
            self._roll(t)
            self.monitor_used += t - max(h.granted, self.monitor_day * DAY_S - DAY0_UNIX)

    def _roll(self, t: float) -> None:
        day = int((DAY0_UNIX + t) // DAY_S)
        if day != self.monitor_day:
            self.monitor_day, self.monitor_used = day, 0.0

    def second(self, t: float) -> None:
        """Every cap that can change without a grant, on this simulated second."""
        self.seconds += 1
        if len(self.live) > self._most():
            self._breach(t, f"max_fraction: {len(self.live)} live leases > {self.policy.max_fraction:g} x "
                            f"{self.total} slots")
        for key in self.touched:
            if self.per_key[key] > self.policy.max_per_orchestrator:
                self._breach(t, f"max_per_orchestrator: {self.per_key[key]} live leases on {key}")
        self.touched.clear()
        self._roll(t)
        start = self.monitor_day * DAY_S - DAY0_UNIX
        held = self.monitor_used + sum(t - max(g, start) for g in self.monitor_live.values())
        budget = self.daily_budget * self.total * DAY_S
        self.monitor_peak_share = max(self.monitor_peak_share, held / budget if budget > 0 else math.inf)
        if held > budget + EPS:
            self._breach(t, f"daily_budget: the monitor held {held:.0f} slot-s today > {budget:.0f}")


# --- the fake executor ----------------------------------------------------------------------------------------

@dataclass
class _Run:
    lease_id: str
    key: str
    region: str
    tag: Any
    granted: float
    monitor: bool
    end: float
    refused: bool = False
    attached: bool = False


class FakeExecutor:
    """A fake executor (fleet.runtime.dispatch.Executor without Ray): sessions "run" on the simulated clock.
    It also moves the fake network's time: capacity reads, other users, the checker's seconds."""

    def __init__(self, broker: SlotBroker, network: FakeNetwork, checker: CapChecker, t: float = 0.0) -> None:
        self.broker, self.net, self.check = broker, network, checker
        self.t = t
        self.live: dict[str, _Run] = {}          # the campaign's sessions (the Dispatcher's ``live``)
        self.monitor_live: dict[str, _Run] = {}
        self.runs: dict[str, _Run] = {}
        self.events: list[tuple[float, int, int, str]] = []   # (time, order, seq, lease id): 0 end, 2 attach
        self.seq = 0
        self.done: list[Finished] = []
        self.monitor_done: list[Finished] = []
        self.next_read = self.next_change = self.next_second = t
        self.fake_cpu = self.check_cpu = 0.0
        self.refused = 0

    # the Clock the Dispatcher and the broker read
    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.advance(self.t + s)

    def clock(self) -> Clock:
        return Clock(self.monotonic, self.sleep)

    # fleet.runtime.dispatch.Executor
    def region_for(self, region: str) -> str:
        return region

    def lease(self, region: str, preferred: str | None, duration_s: float, strict: bool = False,
              monitor: bool = False) -> dict[str, Any] | None:
        lease: Lease | None = self.broker.lease(region, preferred, duration_s, strict)
        if lease is None:
            return None
        self.check.granted(lease.id, lease.key, self.t, monitor)
        return {"id": lease.id, "orchestrator": lease.orchestrator, "orchestrator_uri": lease.orchestrator_uri,
                "idle": lease.idle, "capacity_age_s": lease.age_s}

    def start(self, region: str, job: Job, lease_id: str, tag: Any, monitor: bool = False) -> None:
        key = job.orchestrator_uri or job.orchestrator or ""
        run = _Run(lease_id, key, region, tag, self.t, monitor, self.t + job.duration_s)
        (self.monitor_live if monitor else self.live)[lease_id] = run
        self.runs[lease_id] = run
        self._at(self.t + min(ATTACH_S, job.duration_s / 2), 2, lease_id)

    def poll(self, timeout: float) -> list[Finished]:
        self.advance(self.t + timeout)
        done, self.done = self.done, []
        return done

    def evidence(self, preferred: str | None) -> dict[str, Any]:
        return self.broker.evidence(preferred)

    # the simulated time
    def _at(self, t: float, order: int, lease_id: str) -> None:
        heapq.heappush(self.events, (t, order, self.seq, lease_id))
        self.seq += 1

    def advance(self, to: float) -> None:
        """Everything that happens up to ``to``, in time order: capacity reads and load changes, attaches and
        ends, and the checker's seconds."""
        while True:
            t_ev = self.events[0][0] if self.events else math.inf
            t = min(t_ev, self.next_read, self.next_change, self.next_second)
            if t > to:
                break
            self.t = max(self.t, t)
            if t == self.next_read:   # before an attach at the same instant: that stream is not in the read
                c0 = time.process_time()
                snap = self.net.snapshot(self.t)
                c1 = time.process_time()
                self.broker.update(snap, self.t)
                c2 = time.process_time()
                self.check.snapshot(snap, self.t)
                self.fake_cpu += c1 - c0
                self.check_cpu += time.process_time() - c2
                self.next_read += CAPACITY_REFRESH_S
            elif t == self.next_change:
                c0 = time.process_time()
                self.net.change(self.t)
                self.fake_cpu += time.process_time() - c0
                self.next_change += LOAD_CHANGE_S
            elif t == self.next_second:
                c0 = time.process_time()
                self.check.second(self.t)
                self.check_cpu += time.process_time() - c0
                self.next_second += 1.0
            else:
                _, order, _, lease_id = heapq.heappop(self.events)
                if order == 2:
                    self._attach(lease_id)
                else:
                    self._end(lease_id)
        self.t = max(self.t, to)

    def _attach(self, lease_id: str) -> None:
        run = self.runs[lease_id]
        o = self.net.by_key[run.key]
        if o.kind == "refusing" or o.slots - o.others - o.ours <= 0:   # the gateway refuses: no stream
            run.refused, run.end = True, self.t
            self.refused += 1
            self._end(lease_id)
            return
        o.ours += 1
        run.attached = True
        self.broker.attach(lease_id, ("DELETE", f"http://gateway.example/live/{lease_id}"))
        self.check.attached(lease_id, self.t)
        self._at(run.end, 0, lease_id)

    def _end(self, lease_id: str) -> None:
        run = self.runs.pop(lease_id)
        if run.attached:
            self.net.by_key[run.key].ours -= 1
        self.broker.release(lease_id)
        self.check.released(lease_id, self.t)
        outcome = "skipped_no_capacity" if run.refused else "ok"
        if run.monitor:
            del self.monitor_live[lease_id]
            self.monitor_done.append(Finished(run.tag, lease_id, run.region, row=SessionRow(
                session_id=str(lease_id), outcome=outcome, duration_s=self.t - run.granted)))
            return
        del self.live[lease_id]
        self.done.append(Finished(run.tag, lease_id, run.region,
                                  row=SessionRow(session_id=str(lease_id), outcome=outcome)))


# --- the monitor on the simulated clock ----------------------------------------------------------------------

class MonitorExecutor:
    """A fake executor (``fleet.runtime.executor.RayExecutor``'s face to ``CoverageSource``): the monitor's leases
    and sessions on the shared ``FakeExecutor``. Its poll does not move the time: the dispatcher's does, and the
    monitor's step runs in the same pass."""

    tester_failures = 0

    def __init__(self, ex: FakeExecutor) -> None:
        self.ex = ex
        self.started = 0

    @property
    def live(self) -> dict[str, _Run]:
        return self.ex.monitor_live

    def snapshot(self) -> CapacitySnapshot:
        return self.ex.broker.snapshot

    def final_state(self) -> dict[str, Any]:
        return self.ex.broker.state()

    def state_now(self) -> dict[str, Any]:
        return self.ex.broker.state()

    def lease(self, region: str, preferred: str | None, duration_s: float, strict: bool = False) -> dict[str, Any] | None:
        return self.ex.lease(region, preferred, duration_s, strict, monitor=True)

    def start(self, region: str, job: Job, lease_id: str, tag: Any) -> None:
        self.started += 1
        self.ex.start(region, job, lease_id, tag, monitor=True)

    def poll(self, timeout: float) -> list[Finished]:
        done, self.ex.monitor_done = self.ex.monitor_done, []
        return done

    def evidence(self, preferred: str | None) -> dict[str, Any]:
        return self.ex.evidence(preferred)


def monitor_source(ex: FakeExecutor, cov: Coverage, policy: CapacityPolicy, hours: float,
                   seed: int) -> tuple[CoverageSource, MonitorExecutor]:
    """``fleet monitor``'s source on the simulated clock, for ``hours`` (its ``--for``), over the broker's snapshot."""
    scenario = Scenario.model_validate({
        "name": "control-plane", "target": {"dialect": "reference"}, "workflow": {"pipeline": MODEL},
        "prompts": {"sets": [{"set": "bootstrap"}]},
        "load": {"shape": "stages", "stages": [{"concurrency": 1, "duration_s": 1}], "session": {"duration": 1}},
        "capacity": policy.model_dump(),
        "monitor": {"every_min": cov.every_s / 60, "daily_budget": cov.daily_budget, "session_s": MONITOR_SESSION_S}})
    c = Campaign(scenario, CampaignOptions(progress=False))
    c.campaign_id, c.urls, c.snapshot = "monitor-control-plane", {r: "http://gateway.example" for r in REGIONS}, \
        ex.broker.snapshot
    pool = [PoolEntry("bench", 1.0, Prompt(id=f"p{i}", text=f"prompt {i}", category=f"c{i % 2}")) for i in range(4)]
    view = MonitorExecutor(ex)
    clock = Clock(ex.monotonic, lambda s: None, lambda: DAY0_UNIX + ex.t)   # the dispatcher's poll moves the time
    source = CoverageSource(c, cov, view, pool, "control-plane-run",  # type: ignore[arg-type]  # a fake RayExecutor
                            MonitorOptions(for_s=hours * HOUR_S, seed=seed), clock=clock, log_every_s=HOUR_S)
    return source, view


# --- the run --------------------------------------------------------------------------------------------------

def campaign(hours: float, per_hour: float, net: FakeNetwork, rng: random.Random) -> list[PlannedSession]:
    """Poisson arrivals; lengths log-normal around 45 s; half name an orchestrator, as a plan does."""
    out: list[PlannedSession] = []
    t, end = 0.0, hours * HOUR_S
    while True:
        t += rng.expovariate(per_hour / HOUR_S)
        if t >= end:
            return out
        duration = round(min(300.0, max(10.0, 45.0 * math.exp(0.5 * rng.gauss(0.0, 1.0)))), 3)
        o = rng.choice(net.orchs) if rng.random() < PREFERRED_SHARE else None
        out.append(PlannedSession(len(out), round(t, 3), duration, rng.choice(REGIONS),
                                  o.address if o else None, o.uri if o else None, len(out), ()))


def job_for(s: PlannedSession, region: str) -> Job:
    return Job(f"s{s.index}", "http://gateway.example", s.duration_s, ())


@dataclass
class Hour:
    hour: int
    planned: int = 0
    started: int = 0
    skipped: int = 0
    refused: int = 0
    monitor_started: int = 0
    monitor_skipped: int = 0
    cpu_s: float = 0.0            # the control plane's
    cpu_fake_s: float = 0.0       # the fake network's and the checker's
    real_s: float = 0.0
    rss_mb: float = 0.0


def simulate(orchestrators: int, per_hour: float, hours: float, seed: int, broker_cls: type[SlotBroker] = SlotBroker,
             policy: CapacityPolicy = POLICY, daily_budget: float = MONITOR_BUDGET,
             coverage_cls: type[Coverage] = Coverage, progress: bool = False) -> dict[str, Any]:
    """One simulated run; the figures, ``caps_held`` and ``first_breach``."""
    rng = random.Random(seed)
    net = FakeNetwork(orchestrators, rng)
    sessions = campaign(hours, per_hour, net, rng)
    planned_in = Counter(int(s.start_s // HOUR_S) for s in sessions)
    check = CapChecker(policy, daily_budget)
    snap = net.snapshot()
    broker = broker_cls(policy, snap)
    ex = FakeExecutor(broker, net, check)
    broker.clock = ex.monotonic
    dispatcher = Dispatcher(sessions, ex, policy.lease_wait_s, job_for, ex.clock(), POLL_S)
    monitor, view = monitor_source(ex, coverage_cls(MONITOR_EVERY_S, MONITOR_SESSION_S, daily_budget), policy, hours,
                                   seed)
    ex.advance(0.0)   # the first read, and the checker's first second
    dispatcher.begin()
    monitor.begin()
    per_hour_rows: list[Hour] = []
    hour = Hour(0)
    started = skipped = 0
    breach: str | None = None
    real0 = time.perf_counter()
    cpu0 = hour_cpu = time.process_time()
    hour_real, fake0 = real0, 0.0
    end = hours * HOUR_S
    try:
        while ex.t < end or dispatcher.busy():
            if monitor.busy():
                monitor.step()
            turn = dispatcher.step()
            hour.started += len(turn.started)
            hour.skipped += len(turn.skipped)
            hour.refused += sum(1 for f in turn.finished if f.row is not None and f.row.outcome != "ok")
            if ex.t >= (hour.hour + 1) * HOUR_S or not (ex.t < end or dispatcher.busy()):
                cpu, fake = time.process_time(), ex.fake_cpu + ex.check_cpu
                hour.cpu_fake_s, hour.cpu_s = fake - fake0, (cpu - hour_cpu) - (fake - fake0)
                hour.real_s = time.perf_counter() - hour_real
                hour.planned = planned_in[hour.hour]
                hour.monitor_started, hour.monitor_skipped = view.started - started, monitor.n - view.started - skipped
                hour.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                started, skipped = view.started, monitor.n - view.started
                per_hour_rows.append(hour)
                if progress:
                    show(hour, per_hour_rows[0])
                hour_cpu, fake0, hour_real = cpu, fake, time.perf_counter()
                hour = Hour(hour.hour + 1)
    except CapBreach as exc:
        breach = str(exc)
    cpu_total = time.process_time() - cpu0
    real = time.perf_counter() - real0
    control = cpu_total - ex.fake_cpu - ex.check_cpu
    dispatched = sum(h.started for h in per_hour_rows) + view.started
    sim_hours = ex.t / HOUR_S
    status = monitor.cov.status(monitor.targets, monitor.snapshot.total, DAY0_UNIX + ex.t)
    return {
        "orchestrators": orchestrators, "slots": net.total(), "sessions_per_hour": per_hour, "hours": hours,
        "seed": seed, "simulated_s": round(ex.t, 1), "real_s": round(real, 2),
        "campaign": {"planned": len(sessions), "started": sum(h.started for h in per_hour_rows),
                     "skipped_lease_wait": sum(h.skipped for h in per_hour_rows),
                     "refused_by_gateway": sum(h.refused for h in per_hour_rows)},
        "monitor": {"started": view.started, "skipped": monitor.n - view.started, "targets": status["targets"],
                    "overdue_at_end": len(status["overdue"]), "budget_slot_s": status["budget_s"],
                    "used_slot_s": status["used_s"],   # of the UTC day the run ended in
                    "peak_share_of_daily_budget": round(check.monitor_peak_share, 4)},
        "peak_leases": check.peak, "lease_budget": int(policy.max_fraction * net.total() + EPS),
        "cpu_s": {"control_plane": round(control, 3), "fake_network": round(ex.fake_cpu, 3),
                  "checker": round(ex.check_cpu, 3), "total": round(cpu_total, 3)},
        "cpu_ms_per_dispatched_session": round(1000 * control / max(1, dispatched), 4),
        "cpu_s_per_simulated_hour": round(control / max(sim_hours, 1e-9), 4),
        "core_pct_per_network_hour": round(100 * control / max(sim_hours, 1e-9) / HOUR_S, 4),
        "per_hour_cpu_s": [round(h.cpu_s, 3) for h in per_hour_rows],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "checked": {"grants": check.grants, "seconds": check.seconds},
        "caps_held": breach is None, "first_breach": breach,
    }


def plan_campaign(orchestrators: int, per_hour: float, hours: float, seed: int) -> dict[str, Any]:
    """``fleet plan`` (``fleet.plan.make_plan``) of a ``per_hour`` Poisson campaign over ``hours`` on the fake
    network's first snapshot, under the bench's caps: its CPU, per planned and per requested session."""
    net = FakeNetwork(orchestrators, random.Random(seed))
    scenario = Scenario.model_validate({
        "name": "control-plane-plan", "target": {"dialect": "reference"}, "workflow": {"pipeline": MODEL},
        "prompts": {"sets": [{"set": "bootstrap"}]},
        "load": {"shape": "arrivals", "process": "poisson", "rate_per_min": per_hour / 60, "duration_s": hours * HOUR_S,
                 "max_concurrency": 10_000, "max_wait_s": POLICY.lease_wait_s,
                 "session": {"duration": {"dist": "lognormal", "median_s": 45, "sigma": 0.5}, "max_s": 300, "min_s": 10}},
        "capacity": POLICY.model_dump(), "placement": {"regions": [{"name": r} for r in REGIONS]}})
    pool = [PoolEntry("bench", 1.0, Prompt(id=f"p{i}", text=f"prompt {i}", category=f"c{i % 2}")) for i in range(4)]
    snap = net.snapshot()
    c0 = time.process_time()
    plan = make_plan(scenario, snap, seed, pool=pool)
    cpu = time.process_time() - c0
    asked = len(plan.sessions) + len(plan.skipped)
    return {"orchestrators": orchestrators, "sessions_per_hour": per_hour, "hours": hours, "requested": asked,
            "planned": len(plan.sessions), "skipped": len(plan.skipped), "peak_concurrency": plan.max_concurrency(),
            "budget": plan.budget, "cpu_s": round(cpu, 3), "cpu_ms_per_requested_session": round(1000 * cpu / max(1, asked), 4)}


def show(h: Hour, first: Hour) -> None:
    n = h.started + h.monitor_started
    growth = f", x{h.cpu_s / first.cpu_s:.2f} of hour 0" if first.cpu_s > 0 and h is not first else ""
    print(f"hour {h.hour:3d}: campaign {h.planned} planned, {h.started} started, {h.skipped} skipped (lease wait), "
          f"{h.refused} refused; monitor {h.monitor_started} started, {h.monitor_skipped} skipped; control plane "
          f"{h.cpu_s:.3f} s CPU ({100 * h.cpu_s / HOUR_S:.4f} % of a core{growth}), "
          f"{1000 * h.cpu_s / max(1, n):.3f} ms/session; fake+checker {h.cpu_fake_s:.3f} s; real {h.real_s:.2f} s; "
          f"peak RSS {h.rss_mb:.0f} MB", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orchestrators", type=int, default=1000)
    ap.add_argument("--sessions-per-hour", type=float, default=10_000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline-orchestrators", type=int, default=250,
                    help="a smaller network run first, sessions per hour scaled to its size (0: none)")
    ap.add_argument("--baseline-hours", type=float, default=2.0)
    ap.add_argument("--plan-hours", type=float, default=1.0, help="plan this long a campaign (0: no planning)")
    args = ap.parse_args()
    planned = None
    if args.plan_hours:
        small = max(1, args.baseline_orchestrators or args.orchestrators // 4)
        plan_base = plan_campaign(small, args.sessions_per_hour * small / args.orchestrators, args.plan_hours, args.seed)
        plan_full = plan_campaign(args.orchestrators, args.sessions_per_hour, args.plan_hours, args.seed)
        planned = {**plan_full, "baseline": plan_base, "per_session_cpu_ratio_vs_baseline": round(
            plan_full["cpu_ms_per_requested_session"] / max(plan_base["cpu_ms_per_requested_session"], 1e-9), 3)}
        print(f"plan: {plan_full['requested']} sessions over {args.plan_hours:g} h on {args.orchestrators} orchestrators: "
              f"{plan_full['cpu_s']:.2f} s CPU, {plan_full['cpu_ms_per_requested_session']:.3f} ms/session "
              f"(x{planned['per_session_cpu_ratio_vs_baseline']:.2f} of {small} orchestrators')", flush=True)
    base = None
    if args.baseline_orchestrators:
        base = simulate(args.baseline_orchestrators,   # the same load for its size: sessions scale with the network
                        args.sessions_per_hour * args.baseline_orchestrators / args.orchestrators,
                        args.baseline_hours, args.seed)
        print(f"baseline: {args.baseline_orchestrators} orchestrators, {args.baseline_hours:g} h: "
              f"{base['cpu_ms_per_dispatched_session']:.3f} ms CPU per dispatched session, caps held: "
              f"{base['caps_held']}", flush=True)
    out = simulate(args.orchestrators, args.sessions_per_hour, args.hours, args.seed, progress=True)
    if base is not None:
        out["baseline"] = {k: base[k] for k in ("orchestrators", "sessions_per_hour", "hours", "cpu_ms_per_dispatched_session",
                                                "core_pct_per_network_hour", "caps_held")}
        out["per_session_cpu_ratio_vs_baseline"] = round(
            out["cpu_ms_per_dispatched_session"] / max(base["cpu_ms_per_dispatched_session"], 1e-9), 3)
    if planned is not None:
        out["plan"] = planned
    hours = out["per_hour_cpu_s"]
    if len(hours) >= 3 and hours[1] > 0:
        out["last_to_second_hour_cpu_ratio"] = round(hours[-2] / hours[1], 3)   # the last hour may be partial
    out["machine"] = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    breach = out["first_breach"] or (base or {}).get("first_breach")
    if breach:
        print(f"CAP BROKEN: {breach}", file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 1 if breach else 0


if __name__ == "__main__":
    sys.exit(main())
