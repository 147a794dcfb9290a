"""The capacity rules a campaign keeps, written once.

The planner applies them before the run, on a simulated clock in integer
milliseconds; the slot broker applies them during it, on the live clock.
Both ask this module the same questions:

- **budget**: at most ``max_fraction`` of all the network's slots, and never
  into the last ``idle_reserve`` idle slots;
- **places**: where a session can run. Each eligible orchestrator (by
  ``include``/``exclude`` on its address or URI) with idle slots, capped at
  ``max_per_orchestrator``; or, when the capacity source names no
  orchestrators, each discovered service URI under the same cap; or else the
  gateway's anonymous pool (one place: the gateway chooses, so no
  per-orchestrator cap can hold, but the stagger still does);
- **room**: a place takes one more session while ours there are under its
  cap and it still shows an idle slot that is not already ours (a snapshot
  read after our stream started shows it in use; one read before cannot);
- **stagger**: no two starts on one place closer than ``stagger_s``;
- **order**: the preferred place first, then places never started, then the
  least recently started, then the caller's tie-break (the planner's seeded
  order, the broker's key).

``PlaceOrder`` keeps that order for a live broker across its capacity reads.

Pure: no clock and no network. Times are in the caller's unit (``ticks_per_s``).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.capacity import CapacitySnapshot, OrchestratorSlots
from fleet.scenario import CapacityPolicy

__all__ = ["CapacityRules", "Place", "PlaceOrder"]

STALE_SLACK = 4   # a PlaceOrder drops its stale heap entries when it holds this many per live one


@dataclass(frozen=True)
class Place:
    """Somewhere sessions run: an orchestrator, a discovered URI, or the gateway's anonymous pool (key None)."""

    key: str | None
    address: str
    uri: str
    limit: int | None  # most of our sessions at once (max_per_orchestrator); None: the anonymous pool
    idle: int          # idle slots the snapshot shows

    @property
    def most(self) -> int:
        """Most of our sessions at once on a snapshot read before any of them started."""
        return self.idle if self.limit is None else min(self.limit, self.idle)

    def named(self, preferred: str | None) -> bool:
        return preferred is not None and preferred in (self.address, self.uri)


@dataclass(frozen=True)
class CapacityRules:
    policy: CapacityPolicy
    ticks_per_s: int | None = None  # None: times are float seconds; else whole ticks (the planner: 1000)

    @property
    def stagger(self) -> float:
        """The least time between two starts on one place, in the caller's unit (rounded up to a tick)."""
        s = self.policy.stagger_s
        return s if self.ticks_per_s is None else math.ceil(s * self.ticks_per_s)

    def eligible(self, address: str, uri: str) -> bool:
        if not self.policy.include and not self.policy.exclude:
            return True   # asked of every orchestrator at every capacity read

        def hit(needles: tuple[str, ...]) -> bool:
            return any(n in address or n in uri for n in needles)

        return (not self.policy.include or hit(self.policy.include)) and not hit(self.policy.exclude)

    def budget(self, snapshot: CapacitySnapshot, ours_counted: int = 0) -> int:
        """Most concurrent test streams. ``ours_counted``: our own streams the snapshot shows as in use
        (they are idle slots as far as the reserve is concerned)."""
        by_fraction = math.floor(self.policy.max_fraction * snapshot.total + 1e-9)
        return max(0, min(by_fraction, snapshot.idle + ours_counted - self.policy.idle_reserve))

    def places(self, snapshot: CapacitySnapshot) -> tuple[list[Place], list[str]]:
        """The places the snapshot offers, sorted by key, and notes on what could not be used."""
        cap = self.policy.max_per_orchestrator
        if snapshot.orchestrators:
            return [p for o in snapshot.orchestrators if (p := self.place(o)) is not None], []
        pool = snapshot.anonymous_idle
        if pool <= 0:
            return [], []
        if snapshot.targets:  # discovered orchestrators, slots unknown: each capped and staggered by URI
            return [Place(u, "", u, cap, pool) for u in snapshot.targets if self.eligible("", u)], []
        if self.policy.include:
            return [], ["slots with unknown orchestrators are not used: capacity.include is set"]
        return [Place(None, "", "", None, pool)], [
            "orchestrators unknown (capacity source has none): the per-orchestrator cap cannot be enforced; "
            "the stagger applies to every start"]

    def place(self, o: OrchestratorSlots) -> Place | None:
        """The place one orchestrator of a snapshot offers (``places``), None when it has no idle slot or is
        not eligible. It depends on that orchestrator's entry alone, so a caller may keep it while the entry
        is unchanged."""
        if o.idle > 0 and self.eligible(o.address, o.uri):
            return Place(o.key, o.address, o.uri, self.policy.max_per_orchestrator, o.idle)
        return None

    def has_room(self, place: Place, ours: int, unseen: int) -> bool:
        """``ours``: our sessions on the place now; ``unseen``: those the snapshot cannot know of yet."""
        return (place.limit is None or ours < place.limit) and place.idle - unseen > 0

    def past_stagger(self, last_start: float | None, now: float) -> bool:
        return last_start is None or now - last_start >= self.stagger

    def next_start(self, last_start: float | None) -> float | None:
        """When the stagger next lets a start on a place last started at ``last_start``."""
        return None if last_start is None else last_start + self.stagger

    def choose(self, candidates: Iterable[Place], last_start: Mapping[str | None, float],
               preferred: str | None = None, tiebreak: Callable[[Place], Any] = lambda p: p.key or "") -> Place | None:
        """The place to start on next, among those with room and past their stagger."""
        def order(p: Place) -> tuple[Any, ...]:
            last = last_start.get(p.key)
            return (not p.named(preferred), last is not None, last or 0, tiebreak(p))

        return min(candidates, key=order, default=None)


class PlaceOrder:
    """A snapshot's places least recently started first: ``CapacityRules.choose``'s order when no place is
    preferred (never started, by key; then by last start, by key), kept as a heap of orchestrators (keys) so
    that a lease looks only at the places ahead of the one it takes, not at every place in the network.

    It is kept across snapshots, since a capacity read changes few orchestrators: while the snapshot lists
    the same orchestrators in the same order, only those whose entry changed get their place again
    (``CapacityRules.place`` depends on that entry alone), and the heap changes only for the keys that gained
    their first place or lost their last (the order depends on the key and its last start alone). Each key
    with a place has one live entry, the last pushed (``live``: its sequence number); any other is stale and
    dropped when it comes up. A start pushes the key again (``started``)."""

    def __init__(self, rules: CapacityRules) -> None:
        self.rules = rules
        self.snapshot: CapacitySnapshot | None = None
        self.rows: Sequence[OrchestratorSlots | Place] = ()   # the snapshot's orchestrators, else its places
        self.places: list[Place | None] = []   # per row: its place, None when it offers none
        self.named: dict[str, list[int]] = {}   # address and URI -> the rows so named (Place.named), in order
        self.by_key: dict[str | None, list[int]] = {}
        self.placed: Counter[str | None] = Counter()   # per key: its rows with a place
        self.heap: list[tuple[bool, float, str, int, str | None]] = []
        self.live: dict[str | None, int] = {}   # key with a place -> the sequence number of its one live entry
        self.seq = 0

    def refresh(self, snapshot: CapacitySnapshot, last_start: Mapping[str | None, float]) -> None:
        """Take a new snapshot: each row's place (the rules', in order), the heap re-filed for the keys that
        gained or lost their places."""
        rows: Sequence[OrchestratorSlots | Place] = snapshot.orchestrators or self.rules.places(snapshot)[0]
        if len(rows) == len(self.rows) and all(
                a is b or (a.key, a.address, a.uri) == (b.key, b.address, b.uri) for a, b in zip(rows, self.rows)):
            changed = [i for i, (a, b) in enumerate(zip(rows, self.rows)) if a is not b and a != b]
        else:   # other orchestrators, or in another order: every row afresh
            self._layout(rows)
            changed = list(range(len(rows)))
        self.snapshot, self.rows = snapshot, rows
        for i in changed:
            o = rows[i]
            self._set(i, o if isinstance(o, Place) else self.rules.place(o), last_start)
        if len(self.heap) > STALE_SLACK * len(self.live) + 64:   # mostly stale entries: keep the live ones
            self.heap = [e for e in self.heap if self.live.get(e[4]) == e[3]]
            heapq.heapify(self.heap)

    def _layout(self, rows: Sequence[OrchestratorSlots | Place]) -> None:
        self.places, self.named, self.by_key = [None] * len(rows), {}, {}
        self.placed, self.live, self.heap = Counter(), {}, []
        for i, o in enumerate(rows):
            self.named.setdefault(o.address, []).append(i)
            if o.uri != o.address:
                self.named.setdefault(o.uri, []).append(i)
            self.by_key.setdefault(o.key, []).append(i)

    def _set(self, i: int, place: Place | None, last_start: Mapping[str | None, float]) -> None:
        """Row ``i``'s place is now ``place``: its key enters the heap with its first place, leaves it with
        its last."""
        had, self.places[i] = self.places[i], place
        if (had is None) == (place is None):
            return
        key = self.rows[i].key
        self.placed[key] += 1 if place is not None else -1
        if place is not None and self.placed[key] == 1:
            self._push(key, last_start.get(key))
        elif place is None and self.placed[key] == 0:
            del self.live[key]   # its entry is stale

    def _push(self, key: str | None, last: float | None) -> None:
        self.live[key] = self.seq
        heapq.heappush(self.heap, (last is not None, last or 0, key or "", self.seq, key))
        self.seq += 1

    def named_places(self, name: str) -> list[Place]:
        """The places whose address or URI is ``name``, in order."""
        return [p for i in self.named.get(name, ()) if (p := self.places[i]) is not None]

    def first(self, open_: Callable[[Place], bool]) -> Place | None:
        """The first place in the order that ``open_`` admits (of one key's places, the first in order)."""
        ahead, chosen = [], None
        while self.heap:
            entry = heapq.heappop(self.heap)
            key, seq = entry[4], entry[3]
            if self.live.get(key) != seq:
                continue   # stale: started since, or without a place now
            ahead.append(entry)
            chosen = next((p for i in self.by_key[key] if (p := self.places[i]) is not None and open_(p)), None)
            if chosen is not None:
                break
        for entry in ahead:
            heapq.heappush(self.heap, entry)
        return chosen

    def started(self, key: str | None, now: float) -> None:
        if key in self.live:
            self._push(key, now)
