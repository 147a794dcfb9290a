"""The planner's places in the rules' order (``fleet.rules.CapacityRules.choose``), kept as sessions start and end.

The planner used to scan every slot for every session it placed and for every wait (O(slots x sessions):
a day of 10,000 sessions an hour over 1,000 orchestrators did not plan in minutes). Here a start or a wait
looks at a few entries: the places with room in a heap by the rules' order, the sessions' ends in a heap to
give a full place back its room, and the starts in time order for the next stagger expiry. Times are the
planner's integer milliseconds, never decreasing from one question to the next.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from fleet.rules import CapacityRules, Place

__all__ = ["Slot", "SlotOrder", "expire"]


def expire(ends: list[int], t: int) -> None:
    """Drop the ends at or before ``t`` from a heap of end times."""
    while ends and ends[0] <= t:
        heapq.heappop(ends)


@dataclass
class Slot:
    """A place (fleet.rules) and the sessions the plan runs on it."""

    place: Place
    order: int  # the seeded tie-break
    running: list[int] = field(default_factory=list)  # end times (ms), a heap
    last_start: int | None = None
    open: bool = False  # in the heap of places with room

    def entry(self) -> tuple[bool, int, int]:
        """Its place in ``CapacityRules.choose``'s order with no place preferred: never started first, then
        the least recently started, then the seeded tie-break."""
        return (self.last_start is not None, self.last_start or 0, self.order)


class SlotOrder:
    """The slots, and which one the rules choose next. A snapshot naming one place twice keeps the full scan
    (its order is then the last of the twins with room, as ``choose`` over a dict by key makes it)."""

    def __init__(self, places: list[Place], rules: CapacityRules) -> None:
        self.rules = rules
        self.slots = [Slot(place, i) for i, place in enumerate(places)]
        self.scan = len({s.place.key for s in self.slots}) != len(self.slots)
        self.open: list[tuple[bool, int, int]] = []
        for slot in self.slots:
            self._reopen(slot)
        self.ends: list[tuple[int, int]] = []   # (end, slot order) of every planned session
        self.starts: deque[int] = deque()

    def _reopen(self, slot: Slot) -> None:
        """Back in the heap of places with room, if it has room (the snapshot predates every planned
        session: all of ours are unseen)."""
        ours = len(slot.running)
        if not slot.open and self.rules.has_room(slot.place, ours, ours):
            slot.open = True
            heapq.heappush(self.open, slot.entry())

    def free(self, t: int) -> Slot | None:
        """The slot ``CapacityRules.choose`` picks among those with room and past their stagger: the first with
        room in its order; if that one is within its stagger, so is every later one (started no earlier)."""
        if self.scan:
            return self._scan(t)
        while self.ends and self.ends[0][0] <= t:
            slot = self.slots[heapq.heappop(self.ends)[1]]
            expire(slot.running, t)
            self._reopen(slot)
        if not self.open:
            return None
        slot = self.slots[self.open[0][2]]
        return slot if self.rules.past_stagger(slot.last_start, t) else None

    def _scan(self, t: int) -> Slot | None:
        open_: dict[str | None, Slot] = {}
        for slot in self.slots:
            expire(slot.running, t)
            ours = len(slot.running)
            if self.rules.has_room(slot.place, ours, ours) and self.rules.past_stagger(slot.last_start, t):
                open_[slot.place.key] = slot
        last = {k: float(s.last_start) for k, s in open_.items() if s.last_start is not None}
        place = self.rules.choose([s.place for s in open_.values()], last, tiebreak=lambda p: open_[p.key].order)
        return None if place is None else open_[place.key]

    def started(self, slot: Slot, t: int, end: int) -> None:
        """A session from ``t`` to ``end`` on ``slot`` (the one ``free(t)`` gave): its order and room change."""
        heapq.heappush(slot.running, end)
        slot.last_start = t
        self.starts.append(t)
        if self.scan:
            return
        heapq.heappush(self.ends, (end, slot.order))
        assert self.open and self.open[0][2] == slot.order, "the slot started is the heap's first"
        heapq.heappop(self.open)
        slot.open = False
        self._reopen(slot)

    def next_stagger(self, t: int) -> int | None:
        """The first stagger expiry after ``t``. The first start whose stagger runs past ``t`` is its slot's last
        start: a later start on that slot came a whole stagger after it, so after ``t``."""
        while self.starts:
            free_at = self.rules.next_start(self.starts[0])
            if free_at is not None and free_at > t:
                return int(free_at)
            self.starts.popleft()
        return None
