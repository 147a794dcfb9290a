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

Pure: no clock and no network. Times are in the caller's unit (``ticks_per_s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.capacity import CapacitySnapshot
from fleet.scenario import CapacityPolicy

__all__ = ["CapacityRules", "Place"]


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
            return [Place(o.key, o.address, o.uri, cap, o.idle) for o in snapshot.orchestrators
                    if o.idle > 0 and self.eligible(o.address, o.uri)], []
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
