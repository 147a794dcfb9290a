"""The capacity rules (fleet.rules), and the proof that the planner and the slot broker keep the same ones:
the broker, replaying any plan at its planned times, grants every planned session on its planned
orchestrator."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.capacity import CapacitySnapshot, OrchestratorSlots, static_capacity
from fleet.plan import make_plan
from fleet.rules import CapacityRules, Place
from fleet.runtime.broker import SlotBroker
from fleet.scenario import CapacityPolicy
from test_plan import POOL, scenario


def policy(**kw: object) -> CapacityPolicy:
    return CapacityPolicy.model_validate({"max_fraction": 1.0, "idle_reserve": 0, "stagger_s": 0, **kw})


def net(*idle: int, busy: int = 0) -> CapacitySnapshot:
    return CapacitySnapshot("m", tuple(OrchestratorSlots(f"0x{i}", f"https://o{i}", n, busy)
                                       for i, n in enumerate(idle)), source="gateway")


def test_the_budget_is_a_fraction_of_all_slots_and_spares_the_reserve():
    snap = net(3, 3, 3)  # 9 idle, 9 total
    assert [CapacityRules(policy(max_fraction=f, idle_reserve=r)).budget(snap)
            for f, r in [(0.05, 1), (0.5, 1), (1.0, 1), (1.0, 20)]] == [0, 4, 8, 0]  # floor(0.45); 4.5; 9 - 1
    busy = net(1, 1, busy=2)  # 2 idle of 6
    rules = CapacityRules(policy(idle_reserve=1))
    assert rules.budget(busy) == 1
    assert rules.budget(busy, ours_counted=2) == 3  # two of the busy slots are our streams: idle but for us


def test_places_are_the_eligible_orchestrators_with_idle_slots_each_capped():
    rules = CapacityRules(policy(max_per_orchestrator=2, include=("o1", "0x2", "0x3"), exclude=("o3",)))
    places, notes = rules.places(net(4, 4, 0, 4))
    assert [(p.key, p.limit, p.most) for p in places] == [("https://o1", 2, 2)] and notes == []
    assert CapacityRules(policy(max_per_orchestrator=3)).places(net(1))[0][0].most == 1  # its one idle slot


def test_without_named_orchestrators_discovered_uris_or_else_one_anonymous_pool():
    naap = CapacitySnapshot("m", anonymous_idle=5, targets=("https://a", "https://b"), source="naap")
    places, _ = CapacityRules(policy(max_per_orchestrator=2, exclude=("//b",))).places(naap)
    assert [(p.key, p.address, p.limit, p.idle) for p in places] == [("https://a", "", 2, 5)]
    (pool,), notes = CapacityRules(policy()).places(static_capacity(5))
    assert (pool.key, pool.limit, pool.most) == (None, None, 5) and "cannot be enforced" in notes[0]
    assert CapacityRules(policy(include=("x",))).places(static_capacity(5)) == (
        [], ["slots with unknown orchestrators are not used: capacity.include is set"])
    assert CapacityRules(policy()).places(static_capacity(0)) == ([], [])


def test_room_counts_only_the_streams_the_snapshot_cannot_see():
    rules = CapacityRules(policy(max_per_orchestrator=2))
    place = Place("k", "0xk", "k", 2, 1)
    assert rules.has_room(place, ours=0, unseen=0)
    assert not rules.has_room(place, ours=1, unseen=1)  # its one idle slot is ours, not yet shown
    assert rules.has_room(place, ours=1, unseen=0)      # ours is shown busy; the snapshot's idle slot is free
    assert not rules.has_room(place, ours=2, unseen=0)  # the cap
    assert rules.has_room(Place(None, "", "", None, 3), ours=2, unseen=2)  # the pool: no cap, idle left


def test_the_stagger_in_seconds_or_whole_ticks():
    seconds, ms = CapacityRules(policy(stagger_s=1.5)), CapacityRules(policy(stagger_s=1.5004), ticks_per_s=1000)
    assert seconds.past_stagger(None, 0.0) and not seconds.past_stagger(1.0, 2.4) and seconds.past_stagger(1.0, 2.5)
    assert ms.stagger == 1501 and ms.next_start(1000) == 2501  # rounded up: never closer than asked


def test_the_preferred_place_first_then_never_started_then_least_recent_then_the_tiebreak():
    a, b, c = (Place(k, "", k, 1, 1) for k in "abc")
    rules = CapacityRules(policy())
    assert rules.choose([a, b, c], {"a": 5.0, "b": 1.0}) == c
    assert rules.choose([a, b], {"a": 5.0, "b": 1.0}) == b
    assert rules.choose([a, b], {"a": 5.0, "b": 1.0}, preferred="a") == a
    assert rules.choose([a, b, c], {}, tiebreak=lambda p: -ord(p.key or "")) == c
    assert rules.choose([], {}) is None


loads = st.tuples(st.integers(1, 8), st.integers(10, 90), st.integers(1, 30)).map(
    lambda t: {"shape": "stages", "stages": [{"concurrency": t[0], "duration_s": t[1]}],
               "session": {"duration": {"dist": "uniform", "min_s": 1, "max_s": t[2] + 1}, "max_s": 60, "min_s": 1}})
policies = st.fixed_dictionaries({
    "max_fraction": st.sampled_from([0.25, 0.5, 1.0, 1.0]), "idle_reserve": st.integers(0, 1),
    "max_per_orchestrator": st.integers(1, 3), "stagger_s": st.sampled_from([0, 0.5, 1.337, 7]),
    "exclude": st.lists(st.sampled_from(["0x1", "o3"]), max_size=1)})
networks = st.one_of(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), max_size=6).map(
        lambda os: CapacitySnapshot("sd", tuple(OrchestratorSlots(f"0x{i}", f"https://o{i}", idle, busy)
                                                for i, (idle, busy) in enumerate(os)), source="gateway")),
    st.integers(0, 12).map(lambda n: static_capacity(n, "sd")),
    st.tuples(st.integers(0, 12), st.integers(1, 4)).map(lambda t: CapacitySnapshot(
        "sd", anonymous_idle=t[0], targets=tuple(f"https://o{i}" for i in range(t[1])), source="naap")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(load=loads, caps=policies, snap=networks, seed=st.integers(0, 2**31))
@example(load={"shape": "stages", "stages": [{"concurrency": 3, "duration_s": 30}],  # the stagger leaves only
               "session": {"duration": 20, "max_s": 60}},                          # an orchestrator whose one
         caps={"max_per_orchestrator": 3, "stagger_s": 7}, snap=net(1, 3), seed=0)  # idle slot is already ours
def test_the_broker_grants_every_planned_session_where_the_plan_put_it(load, caps, snap, seed):
    sc = scenario(load, caps)
    plan = make_plan(sc, snap, seed, pool=POOL)
    now = [0]
    broker = SlotBroker(sc.capacity, snap, clock=lambda: now[0], ticks_per_s=1000)
    broker.update(snap, taken_at=-1)
    events = sorted([(round(s.start_s * 1000), 1, s.index) for s in plan.sessions]
                    + [(round(s.end_s * 1000), 0, s.index) for s in plan.sessions])  # ends before starts
    leases: dict[int, str] = {}
    for t, kind, i in events:
        now[0] = t
        if kind == 0:
            broker.release(leases.pop(i))
            continue
        s = plan.sessions[i]
        want = s.orchestrator_uri or s.orchestrator
        lease = broker.lease("r", want, duration_s=10**9, strict=want is not None)
        assert lease is not None, f"the broker refused planned session {i} at {t} ms on {want}"
        assert (lease.orchestrator, lease.orchestrator_uri) == (s.orchestrator, s.orchestrator_uri)
        leases[i] = lease.id
    assert not broker.leases and broker.refused == 0
