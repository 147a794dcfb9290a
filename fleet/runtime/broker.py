"""The slot broker: live capacity, and leases that keep a campaign inside its caps.

``SlotBroker`` is plain Python (tested without Ray); ``BrokerActor`` is the
one Ray actor a campaign runs it in. The broker reads capacity from the
scenario's source, refreshes it, and grants a lease only when the campaign
stays under the capacity fraction, out of the idle reserve, under the
per-orchestrator limit and past the stagger since the last start on that
orchestrator. It prefers the least recently tested orchestrator. A lease
ends when released, or at its expiry (the session's length plus ``ttl_s``),
so a lease whose holder died without a release cannot hold a slot for ever.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.capacity import CapacitySnapshot
from fleet.scenario import CapacityPolicy

__all__ = ["Lease", "SlotBroker"]


@dataclass
class Lease:
    id: str
    orchestrator: str | None      # address; None when the capacity source names no orchestrators
    orchestrator_uri: str | None
    holder: str
    expires: float
    granted: float = 0.0


@dataclass
class SlotBroker:
    policy: CapacityPolicy
    snapshot: CapacitySnapshot
    clock: Callable[[], float] = time.monotonic
    ttl_s: float = 30.0
    leases: dict[str, Lease] = field(default_factory=dict)
    last_start: dict[str, float] = field(default_factory=dict)  # per orchestrator: stagger and least recent
    refused: int = 0
    snapshot_at: float = field(default=-1e18)

    def _expire(self) -> None:
        now = self.clock()
        for lid in [lid for lid, lease in self.leases.items() if lease.expires <= now]:
            del self.leases[lid]

    def _eligible(self, address: str, uri: str) -> bool:
        p = self.policy
        text = f"{address} {uri}"
        if p.include and not any(s in text for s in p.include):
            return False
        return not any(s in text for s in p.exclude)

    def update(self, snapshot: CapacitySnapshot, taken_at: float | None = None) -> None:
        """New capacity, read at ``taken_at``: it counts streams leased before then as in use."""
        self.snapshot = snapshot
        self.snapshot_at = self.clock() if taken_at is None else taken_at

    def _unseen(self, orchestrator: str | None = None) -> int:
        """Our leases the snapshot cannot know of yet (granted after it was read)."""
        return sum(1 for lease in self.leases.values() if lease.granted > self.snapshot_at
                   and (orchestrator is None or lease.orchestrator == orchestrator))

    def budget(self) -> int:
        """Most concurrent test streams now: a fraction of all slots, never into the idle reserve."""
        snap = self.snapshot
        seen = len(self.leases) - self._unseen()
        idle_without_us = snap.idle + seen
        by_fraction = int(self.policy.max_fraction * snap.total + 1e-9)
        return max(0, min(by_fraction, idle_without_us - self.policy.idle_reserve))

    def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None) -> Lease | None:
        """A slot for one session, or None (the session is then skipped for capacity)."""
        self._expire()
        if len(self.leases) >= self.budget():
            self.refused += 1
            return None
        now = self.clock()
        ttl = self.ttl_s if duration_s is None else duration_s + self.ttl_s
        if not self.snapshot.orchestrators:  # anonymous capacity: the gateway picks
            lease = Lease(uuid.uuid4().hex, None, None, holder, now + ttl, now)
            self.leases[lease.id] = lease
            return lease
        running: dict[str, int] = {}
        for lease in self.leases.values():
            if lease.orchestrator:
                running[lease.orchestrator] = running.get(lease.orchestrator, 0) + 1
        candidates = []
        for o in self.snapshot.orchestrators:
            mine = running.get(o.address, 0)
            if not self._eligible(o.address, o.uri) or mine >= self.policy.max_per_orchestrator:
                continue
            if o.idle - self._unseen(o.address) <= 0:
                continue
            if now - self.last_start.get(o.address, -1e9) < self.policy.stagger_s:
                continue
            candidates.append(o)
        if not candidates:
            self.refused += 1
            return None
        candidates.sort(key=lambda o: (o.address != preferred, self.last_start.get(o.address, -1e9), o.address))
        chosen = candidates[0]
        self.last_start[chosen.address] = now
        lease = Lease(uuid.uuid4().hex, chosen.address, chosen.uri, holder, now + ttl, now)
        self.leases[lease.id] = lease
        return lease

    def release(self, lease_id: str) -> None:
        self.leases.pop(lease_id, None)

    def state(self) -> dict[str, Any]:
        self._expire()
        return {"leases": len(self.leases), "budget": self.budget(), "refused": self.refused,
                "capacity": self.snapshot.summary()}
