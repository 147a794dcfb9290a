"""The planner keeps its places in order (a heap of places with room, the starts in time order) instead of
scanning every slot for every session. The plan must be exactly the one the full scan made: the scan is
re-stated here, as it was, and both are run over random snapshots, policies, regions and loads."""

from __future__ import annotations

from dataclasses import asdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.capacity import CapacitySnapshot, OrchestratorSlots, static_capacity
from fleet.plan import PlannedSession, _Planner, _Request, _Slot, make_plan
from tests.test_plan import POOL, durations, policies, regions, scenario


class ScanningPlanner(_Planner):
    """The planner before it kept its places in order: every slot scanned at every start and every wait."""

    @staticmethod
    def _expire(ends: list[int], t: int) -> None:
        ends[:] = [e for e in ends if e > t]

    def _free_slot(self, t: int) -> _Slot | None:
        open_: dict[str | None, _Slot] = {}
        for slot in self.slots:
            self._expire(slot.running, t)
            ours = len(slot.running)
            if self.rules.has_room(slot.place, ours, ours) and self.rules.past_stagger(slot.last_start, t):
                open_[slot.place.key] = slot
        last = {k: float(s.last_start) for k, s in open_.items() if s.last_start is not None}
        place = self.rules.choose([s.place for s in open_.values()], last, tiebreak=lambda p: open_[p.key].order)
        return None if place is None else open_[place.key]

    def _next_change(self, t: int) -> int | None:
        times = [e for e in self.running if e > t]
        for slot in self.slots:
            free_at = self.rules.next_start(slot.last_start)
            if free_at is not None and free_at > t:
                times.append(int(free_at))
        return min(times) if times else None

    def _try_start(self, t: int, req: _Request) -> int | None:
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
        for ends in (self.running, slot.running, self.region_running[region]):
            ends.append(end)
        slot.last_start = t
        self.sessions.append(PlannedSession(
            index=len(self.sessions), start_s=t / 1000, duration_s=duration / 1000, region=region,
            orchestrator=slot.place.address or None, orchestrator_uri=slot.place.uri or None,
            seed=self.seeds.randrange(2**31), prompts=self._schedule(duration)))
        return end


def scanned(sc, snap: CapacitySnapshot, seed: int) -> dict:
    planner = ScanningPlanner(sc, snap, seed, POOL)
    planner.run()
    return {"budget": planner.cap, "sessions": [asdict(s) for s in planner.sessions],
            "skipped": [asdict(s) for s in planner.skipped]}


def ordered(sc, snap: CapacitySnapshot, seed: int) -> dict:
    plan = make_plan(sc, snap, seed, pool=POOL)
    return {"budget": plan.budget, "sessions": [asdict(s) for s in plan.sessions],
            "skipped": [asdict(s) for s in plan.skipped]}


# busier than tests/test_plan.py's: more orchestrators, more load, some URIs named twice (the scan's fallback)
orchestrators = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 40)), min_size=0, max_size=40)
networks = st.one_of(
    orchestrators.map(lambda os: CapacitySnapshot("sd", tuple(
        OrchestratorSlots(f"0x{i}", f"https://o{i}", idle, busy) for i, (idle, busy, _) in enumerate(os)),
        source="gateway")),
    orchestrators.map(lambda os: CapacitySnapshot("sd", tuple(   # a URI listed twice (index mod 7)
        OrchestratorSlots(f"0x{i}", f"https://o{i % 7}", idle, busy) for i, (idle, busy, _) in enumerate(os)),
        source="gateway")),
    st.integers(0, 40).map(lambda n: static_capacity(n, "sd")),
)
loads = st.tuples(
    st.one_of(
        st.lists(st.tuples(st.integers(0, 30), st.integers(1, 90)), min_size=1, max_size=4).map(
            lambda ss: {"shape": "stages", "stages": [{"concurrency": c, "duration_s": d} for c, d in ss]}),
        st.tuples(st.sampled_from(["poisson", "constant"]), st.integers(1, 240), st.integers(1, 40),
                  st.integers(5, 180), st.integers(0, 30)).map(
            lambda t: {"shape": "arrivals", "process": t[0], "rate_per_min": t[1], "max_concurrency": t[2],
                       "duration_s": t[3], "max_wait_s": t[4]})),
    durations).map(lambda t: {**t[0], "session": {"duration": t[1], "max_s": 120, "min_s": 1}})
wide_policies = policies.map(lambda p: {**p, "max_per_orchestrator": p["max_per_orchestrator"] + (p["idle_reserve"] > 1)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(load=loads, policy=st.one_of(policies, wide_policies), snap=networks, region_list=regions,
       seed=st.integers(0, 2**31))
def test_the_ordered_planner_makes_the_scanning_planners_plan(load, policy, snap, region_list, seed):
    sc = scenario(load, policy, region_list)
    assert ordered(sc, snap, seed) == scanned(sc, snap, seed)


def test_the_property_sees_plans_that_wait_skip_and_spread():
    """The comparison above is not vacuous: one of its kind of cases waits for the stagger, skips, and spreads
    over many orchestrators, and both planners agree on it."""
    sc = scenario({"shape": "arrivals", "process": "poisson", "rate_per_min": 200, "max_concurrency": 30,
                   "duration_s": 120, "max_wait_s": 5, "session": {"duration": 20.0, "max_s": 120, "min_s": 1}},
                  {"max_fraction": 0.5, "idle_reserve": 0, "max_per_orchestrator": 2, "stagger_s": 7})
    snap = CapacitySnapshot("sd", tuple(OrchestratorSlots(f"0x{i}", f"https://o{i}", 1 + i % 4, i % 3)
                                        for i in range(30)), source="gateway")
    new, old = ordered(sc, snap, 5), scanned(sc, snap, 5)
    assert new == old
    assert len(new["sessions"]) > 100 and len(new["skipped"]) > 10
    assert len({s["orchestrator"] for s in new["sessions"]}) == 30
