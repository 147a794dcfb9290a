"""The slot broker against a simulated network: no sequence of leases, streams, releases,
outside users and capacity refreshes ever takes the campaign past a cap.

The network here is a model (orchestrators with slots, other users, our streams), not the
reference gateway: it lets hypothesis try thousands of interleavings, including a snapshot
read while our leases are granted but their streams not yet started.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.capacity import CapacitySnapshot, OrchestratorSlots, static_capacity
from fleet.runtime.broker import SlotBroker
from fleet.scenario import CapacityPolicy


@dataclass
class Net:
    slots: list[int]
    others: list[int]
    ours: dict[str, tuple[int, bool]] = field(default_factory=dict)  # lease id -> (orchestrator index, started)
    known: list[int] = field(default_factory=list)  # other users as of the broker's last snapshot

    def addr(self, i: int) -> str:
        return f"0x{i:040x}"

    def snapshot(self) -> CapacitySnapshot:
        orchs = []
        for i, n in enumerate(self.slots):
            started = sum(1 for o, on in self.ours.values() if o == i and on)
            orchs.append(OrchestratorSlots(self.addr(i), f"https://o{i}:8935", max(0, n - self.others[i] - started),
                                           self.others[i] + started))
        return CapacitySnapshot("m", tuple(orchs), source="gateway")

    def free(self, i: int | None = None, others: list[int] | None = None) -> int:
        """Slots nobody holds or has been promised (our granted leases count even before their stream starts)."""
        others = self.others if others is None else others
        idx = range(len(self.slots)) if i is None else [i]
        return sum(self.slots[j] - others[j] - sum(1 for o, _ in self.ours.values() if o == j) for j in idx)


ops = st.lists(st.tuples(st.sampled_from(["lease", "start", "release", "other+", "other-", "refresh", "tick"]),
                         st.integers(0, 7)), min_size=1, max_size=80)


networks = dict(slots=st.lists(st.integers(0, 4), min_size=1, max_size=5), fraction=st.sampled_from([0.05, 0.3, 0.5, 1.0]),
                reserve=st.integers(0, 2), per_orch=st.integers(1, 3), stagger=st.sampled_from([0.0, 1.0, 5.0]), ops=ops)


@settings(max_examples=400, deadline=None)
@given(**networks)
def test_no_interleaving_breaks_a_cap(slots, fraction, reserve, per_orch, stagger, ops):
    """The fast tier's share of the search; the full tier searches five times further (below)."""
    interleave(slots, fraction, reserve, per_orch, stagger, ops)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(**networks)
def test_no_interleaving_breaks_a_cap_searched_further(slots, fraction, reserve, per_orch, stagger, ops):
    interleave(slots, fraction, reserve, per_orch, stagger, ops)


def interleave(slots, fraction, reserve, per_orch, stagger, ops):
    net = Net(slots, [0] * len(slots))
    now = [0.0]
    policy = CapacityPolicy(max_fraction=fraction, idle_reserve=reserve, max_per_orchestrator=per_orch,
                            stagger_s=stagger)
    broker = SlotBroker(policy, net.snapshot(), clock=lambda: now[0])
    broker.update(net.snapshot())
    net.known = list(net.others)
    total = sum(slots)
    starts: dict[int, float] = {}
    index = {net.addr(i): i for i in range(len(slots))}
    for op, k in ops:
        if op == "lease":
            lease = broker.lease("r")
            if lease is None:
                continue
            i = index[lease.orchestrator]
            assert i not in starts or now[0] - starts[i] >= stagger
            starts[i] = now[0]
            net.ours[lease.id] = (i, False)
            assert len(net.ours) <= int(fraction * total + 1e-9)
            assert sum(1 for o, _ in net.ours.values() if o == i) <= per_orch
            # outside users who came after the last snapshot are unknowable: judge by what it showed
            assert net.free(i, net.known) >= 0, "leased a slot the orchestrator does not have"
            assert net.free(None, net.known) >= reserve, "took the idle reserve"
        elif op == "start" and net.ours:
            lid = list(net.ours)[k % len(net.ours)]
            i = net.ours[lid][0]
            if net.slots[i] - net.others[i] - sum(1 for o, on in net.ours.values() if o == i and on) <= 0:
                continue   # an outside user took the slot after the broker's snapshot: the gateway refuses ours
            net.ours[lid] = (i, True)
            broker.attach(lid, ("DELETE", f"http://gw/{lid}"))
        elif op == "release" and net.ours:
            lid = list(net.ours)[k % len(net.ours)]
            started = net.ours.pop(lid)[1]
            assert broker.release(lid) == (("DELETE", f"http://gw/{lid}") if started else None)
        elif op == "other+":
            i = k % len(slots)
            if net.free(i) > 0:  # an outside user only takes a slot that is really free
                net.others[i] += 1
        elif op == "other-":
            i = k % len(slots)
            net.others[i] = max(0, net.others[i] - 1)
        elif op == "refresh":
            broker.update(net.snapshot())
            net.known = list(net.others)
        else:
            now[0] += 0.5 * (k + 1)


def test_anonymous_capacity_caps_the_count_and_returns_stop_requests():
    now = [0.0]
    broker = SlotBroker(CapacityPolicy(max_fraction=0.5, idle_reserve=1, stagger_s=0), static_capacity(10),
                        clock=lambda: now[0])
    leases = [broker.lease("r") for _ in range(8)]
    granted = [x for x in leases if x is not None]
    assert len(granted) == 5 and broker.refused == 3  # floor(0.5 * 10)
    broker.attach(granted[0].id, ("DELETE", "http://gw/x"))
    assert broker.release(granted[0].id) == ("DELETE", "http://gw/x")
    assert broker.release(granted[0].id) is None
    assert broker.lease("r") is not None


def test_a_lease_whose_holder_never_releases_expires():
    now = [0.0]
    broker = SlotBroker(CapacityPolicy(max_fraction=1.0, idle_reserve=0, stagger_s=0), static_capacity(1),
                        clock=lambda: now[0], ttl_s=30)
    assert broker.lease("r", duration_s=10) is not None
    assert broker.lease("r", duration_s=10) is None
    now[0] = 39.9
    assert broker.lease("r", duration_s=10) is None
    now[0] = 40.1
    assert broker.lease("r", duration_s=10) is not None


def test_discovered_orchestrators_are_targeted_by_uri_each_capped_and_staggered():
    """NaaP capacity (slots per model only) plus NaaP discovery (the URIs offering it): the broker hands
    each lease a target URI, least recently started first, never more than max_per_orchestrator per URI
    and never two starts on one URI within the stagger."""
    snap = CapacitySnapshot("m", anonymous_idle=100, anonymous_in_use=0, source="naap",
                            targets=("https://a:8935", "https://b:8935", "https://c:8935"))
    now = [0.0]
    broker = SlotBroker(CapacityPolicy(max_fraction=1.0, idle_reserve=0, max_per_orchestrator=2, stagger_s=5.0),
                        snap, clock=lambda: now[0])
    broker.update(snap)
    first = [broker.lease("h") for _ in range(4)]
    assert [lease and lease.orchestrator_uri for lease in first] == ["https://a:8935", "https://b:8935",
                                                                     "https://c:8935", None]  # all staggered
    now[0] = 5.0
    second = [broker.lease("h") for _ in range(4)]
    assert [lease and lease.orchestrator_uri for lease in second] == ["https://a:8935", "https://b:8935",
                                                                      "https://c:8935", None]  # all at 2
    broker.release(second[1].id)
    now[0] = 10.0
    assert broker.lease("h").orchestrator_uri == "https://b:8935"
    assert all(lease.orchestrator is None for lease in first[:3])  # no address is invented


def test_a_skip_gets_the_targets_idle_slots_and_the_snapshots_age():
    now = [100.0]
    snap = CapacitySnapshot("m", (OrchestratorSlots("0xa", "https://a:8935", 3, 1),))
    broker = SlotBroker(CapacityPolicy(), snap, clock=lambda: now[0])
    broker.update(snap, taken_at=95.0)
    assert broker.evidence("https://a:8935") == {"target_idle_slots": 3, "capacity_age_s": 5.0}
    assert broker.evidence("0xa")["target_idle_slots"] == 3
    assert broker.evidence("https://other:8935") == {"target_idle_slots": None, "capacity_age_s": 5.0}
    assert broker.evidence(None)["target_idle_slots"] is None


def _rules_choice(broker: SlotBroker, preferred: str | None, strict: bool) -> tuple[str | None, str | None] | str:
    """What ``fleet.rules`` chooses, asked the plain way: every place of the snapshot filtered, then ``choose``."""
    broker._expire()
    if len(broker.leases) >= broker.budget():
        return "refused"
    now = broker.clock()
    ours = Counter(lease.key for lease in broker.leases.values())
    unseen = broker._unseen()
    places, _ = broker.rules.places(broker.snapshot)
    open_ = [p for p in places if (not strict or p.named(preferred))
             and broker.rules.has_room(p, ours[p.key], unseen[p.key])
             and broker.rules.past_stagger(broker.last_start.get(p.key), now)]
    chosen = broker.rules.choose(open_, broker.last_start, preferred)
    return "refused" if chosen is None else (chosen.key, chosen.address)


@pytest.mark.parametrize("seed", range(8))
def test_the_brokers_ordered_places_choose_exactly_what_the_rules_choose(seed):
    """The broker keeps its places in the rules' order (a heap, so a lease does not look at every place of a
    large network); over random leases, releases, ties in time and refreshes it picks what the rules pick."""
    rng = random.Random(seed)
    now = [0.0]
    addrs = [f"0x{i % 9:02x}" for i in range(12)]   # some addresses behind two URIs, one URI listed twice

    def snap() -> CapacitySnapshot:
        return CapacitySnapshot("m", tuple(OrchestratorSlots(a, f"https://o{i % 11}:8935", rng.randint(0, 3),
                                                             rng.randint(0, 2))
                                           for i, a in enumerate(addrs)), source="gateway")

    policy = CapacityPolicy(max_fraction=rng.choice([0.5, 1.0]), idle_reserve=rng.randint(0, 2),
                            max_per_orchestrator=rng.randint(1, 3), stagger_s=rng.choice([0.0, 1.0, 3.0]))
    broker = SlotBroker(policy, snap(), clock=lambda: now[0])
    broker.update(broker.snapshot)
    names = [None, "", "https://nowhere:8935", *addrs, *(f"https://o{i}:8935" for i in range(12))]
    for _ in range(400):
        op = rng.random()
        if op < 0.6:
            preferred, strict = rng.choice(names), rng.random() < 0.3
            expected = _rules_choice(broker, preferred, strict)
            lease = broker.lease("h", preferred, 5.0, strict)
            assert ((lease.key, lease.orchestrator) if lease else "refused") == expected
        elif op < 0.75 and broker.leases:
            broker.release(rng.choice(list(broker.leases)))
        elif op < 0.85:
            broker.update(snap())
        else:
            now[0] += rng.choice([0.0, 0.5, 1.0, 2.0])


Spot = tuple[str | None, str, str, int | None, int, int | None]


def _scratch_places(snapshot: CapacitySnapshot, cap: int) -> list[Spot]:
    """(key, address, uri, most of ours at once or None, idle slots, the idle slots a lease names as its
    evidence) of every place a snapshot offers, by the rules as this test states them: each listed
    orchestrator; without any, each discovered URI with the whole anonymous pool's idle slots and the
    per-orchestrator cap (its own slots unknown: no evidence); without those, the pool itself, uncapped, under
    the key None; nothing when the pool has no idle slot."""
    if snapshot.orchestrators:
        return [(o.key, o.address, o.uri, cap, o.idle, o.idle) for o in snapshot.orchestrators]
    pool = snapshot.anonymous_idle
    if pool <= 0:
        return []
    if snapshot.targets:
        return [(uri, "", uri, cap, pool, None) for uri in snapshot.targets]
    return [(None, "", "", None, pool, pool)]


def _scratch_choice(broker: SlotBroker, preferred: str | None, strict: bool) -> tuple[str | None, str, int | None] | str:
    """The place a lease takes, worked out from scratch with the test's own code (not fleet.rules): every
    place of the snapshot (``_scratch_places``) with an idle slot, room under its cap and past the stagger;
    the named one first, then never started, then least recently started, then by key, then the snapshot's
    order."""
    broker._expire()
    if len(broker.leases) >= broker.budget():
        return "refused"
    now, policy, last = broker.clock(), broker.policy, broker.last_start
    ours = Counter(lease.key for lease in broker.leases.values())
    unseen = Counter(lease.key for lease in broker.leases.values()
                     if lease.attached is None or lease.attached >= broker.snapshot_at)

    def named(address: str, uri: str) -> bool:
        return preferred is not None and preferred in (address, uri)

    open_ = [(not named(address, uri), key in last, last.get(key, 0), key or "", i, (key, address, evidence))
             for i, (key, address, uri, most, idle, evidence) in enumerate(_scratch_places(broker.snapshot,
                                                                                policy.max_per_orchestrator))
             if idle > 0 and (most is None or ours[key] < most) and idle - unseen[key] > 0
             and (key not in last or now - last[key] >= policy.stagger_s)
             and (not strict or named(address, uri))]
    if not open_:
        return "refused"
    return min(open_, key=lambda c: c[:5])[5]


@pytest.mark.parametrize("seed", range(12))
def test_the_place_order_kept_across_snapshots_chooses_what_a_fresh_look_chooses(seed):
    """The broker keeps its place order across capacity reads, redoing only the orchestrators whose entry
    changed (a new object with new slots, or an equal copy), and starting afresh when the orchestrators or
    their order change (also to and from a source that knows no orchestrators: discovered URIs, or the
    anonymous pool alone); over random reads, leases, streams, releases and time it takes what a from-scratch
    look at the snapshot takes."""
    rng = random.Random(seed)
    now = [0.0]

    def row(i: int) -> OrchestratorSlots:
        return OrchestratorSlots(f"0x{i % 7:02x}", f"https://o{i % 9}:8935", rng.choice([0, 0, 1, 2, 3]),
                                 rng.randint(0, 2))

    rows = [row(i) for i in range(rng.randint(0, 12))]
    policy = CapacityPolicy(max_fraction=1.0, idle_reserve=rng.randint(0, 1), max_per_orchestrator=rng.randint(1, 2),
                            stagger_s=rng.choice([0.0, 1.0, 3.0]))
    broker = SlotBroker(policy, CapacitySnapshot("m", tuple(rows), source="gateway"), clock=lambda: now[0])
    names = [None, "", "https://nowhere:8935", *(f"0x{i:02x}" for i in range(7)), *(f"https://o{i}:8935" for i in range(9))]
    for _ in range(500):
        op = rng.random()
        if op < 0.5:
            preferred, strict = rng.choice(names), rng.random() < 0.3
            expected = _scratch_choice(broker, preferred, strict)
            lease = broker.lease("h", preferred, 5.0, strict)
            assert ((lease.key, lease.orchestrator or "", lease.idle) if lease else "refused") == expected
        elif op < 0.6 and broker.leases:
            broker.release(rng.choice(list(broker.leases)))
        elif op < 0.7 and broker.leases:
            broker.attach(rng.choice(list(broker.leases)), ("DELETE", "http://g/x"))
        elif op < 0.85:   # a capacity read: most entries the same objects, some new, some equal copies
            for i, o in enumerate(rows):
                u = rng.random()
                if u < 0.2:
                    rows[i] = OrchestratorSlots(o.address, o.uri, rng.choice([0, 1, 2, 3]), o.in_use)
                elif u < 0.3:
                    rows[i] = OrchestratorSlots(o.address, o.uri, o.idle, o.in_use)
            u = rng.random()
            if u < 0.1:
                rows.insert(rng.randint(0, len(rows)), row(rng.randint(0, 20)))
            elif u < 0.2 and rows:
                del rows[rng.randrange(len(rows))]
            elif u < 0.25:
                rng.shuffle(rows)
            if rng.random() < 0.15:   # a source that knows no orchestrators: discovered URIs, or the pool alone
                uris = tuple(rng.sample([f"https://o{i}:8935" for i in range(9)], rng.choice([0, 0, 1, 3])))
                broker.update(CapacitySnapshot("m", anonymous_idle=rng.randint(0, 4), anonymous_in_use=rng.randint(0, 2),
                                               targets=uris, source="naap"))
            else:
                broker.update(CapacitySnapshot("m", tuple(rows), source="gateway"))
        else:
            now[0] += rng.choice([0.0, 0.5, 1.0, 2.0])


def test_a_capacity_read_redoes_only_the_orchestrators_that_changed():
    """Kept across a read that changes one orchestrator: the others' places are the same objects."""
    rows = tuple(OrchestratorSlots(f"0x{i}", f"https://o{i}:8935", 2, 0) for i in range(4))
    broker = SlotBroker(CapacityPolicy(), CapacitySnapshot("m", rows, source="gateway"))
    before = list(broker._ordered().places)
    broker.update(CapacitySnapshot("m", (*rows[:3], OrchestratorSlots("0x3", "https://o3:8935", 1, 1)),
                                   source="gateway"))
    after = broker._ordered().places
    assert after[:3] == before[:3] and all(a is b for a, b in zip(after[:3], before[:3]))
    assert after[3] is not None and after[3].idle == 1
