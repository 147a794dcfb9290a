"""The slot broker: live capacity, and leases that keep a campaign inside its caps.

``SlotBroker`` is plain Python (tested without Ray); ``BrokerActor`` is the
one Ray actor a campaign runs it in, which also re-reads the capacity source
every ``refresh_s``. The broker grants a lease only where the capacity rules
(``fleet.rules``, the planner's rules too) allow: under the capacity
fraction, out of the idle reserve, under the per-orchestrator limit and past
the stagger since the last start on that orchestrator, the least recently
tested orchestrator first. What it adds is the live view: our leases whose
streams the last snapshot could not yet see still count as taken. A lease
ends when released, or at its expiry (the session's length plus ``ttl_s``),
so a lease whose holder died without a release cannot hold a slot for ever.

A runner attaches to its lease how to stop the stream at the gateway once
the stream exists (method and URL, never the token); whoever releases the
lease of a session that died with its runner gets that back and stops the
stream itself, so a crashed tester leaves no load behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleet.capacity import CapacitySnapshot, parse_capacity, parse_naap_discovery, static_capacity
from fleet.errors import CapacityError
from fleet.rules import CapacityRules
from fleet.scenario import CapacityPolicy, NaapCapacity, Scenario, StaticCapacity

__all__ = ["BrokerActor", "Lease", "SlotBroker", "read_capacity"]

log = logging.getLogger("fleet.broker")
REFRESH_MIN_S = 1.0


@dataclass
class Lease:
    id: str
    orchestrator: str | None      # address; None when the capacity source names no orchestrators
    orchestrator_uri: str | None
    holder: str
    expires: float
    granted: float = 0.0
    stop: tuple[str, str] | None = None  # (method, url) that stops the stream at the gateway, once it exists
    attached: float | None = None         # when the stream existed at the gateway (it holds a slot there)

    @property
    def key(self) -> str | None:
        """The orchestrator as the broker tells them apart (OrchestratorSlots.key): its URI, else its address."""
        return self.orchestrator_uri or self.orchestrator


@dataclass
class SlotBroker:
    policy: CapacityPolicy
    snapshot: CapacitySnapshot
    clock: Callable[[], float] = time.monotonic
    ttl_s: float = 30.0
    ticks_per_s: int | None = None  # the clock's unit: None for seconds (tests may count whole milliseconds)
    leases: dict[str, Lease] = field(default_factory=dict)
    last_start: dict[str | None, float] = field(default_factory=dict)  # per place: stagger and least recent
    refused: int = 0
    snapshot_at: float = field(default=-1e18)

    def __post_init__(self) -> None:
        self.rules = CapacityRules(self.policy, self.ticks_per_s)

    def _expire(self) -> None:
        now = self.clock()
        for lid in [lid for lid, lease in self.leases.items() if lease.expires <= now]:
            del self.leases[lid]

    def update(self, snapshot: CapacitySnapshot, taken_at: float | None = None) -> None:
        """New capacity, read at ``taken_at``: it counts streams leased before then as in use."""
        self.snapshot = snapshot
        self.snapshot_at = self.clock() if taken_at is None else taken_at

    def _unseen(self) -> Counter[str | None]:
        """Our leases the snapshot cannot know of, per place: their streams did not exist yet when it was read."""
        return Counter(lease.key for lease in self.leases.values()
                       if lease.attached is None or lease.attached >= self.snapshot_at)  # a tie: assume unseen

    def budget(self) -> int:
        """Most concurrent test streams now (the rules' budget, counting the streams the snapshot saw as ours)."""
        return self.rules.budget(self.snapshot, ours_counted=len(self.leases) - self._unseen().total())

    def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
              strict: bool = False) -> Lease | None:
        """A slot for one session, or None (the session is then skipped for capacity). ``strict``: on the
        preferred orchestrator (address or URI) only."""
        self._expire()
        if len(self.leases) >= self.budget():
            self.refused += 1
            return None
        now = self.clock()
        ours = Counter(lease.key for lease in self.leases.values())
        unseen = self._unseen()
        places, _ = self.rules.places(self.snapshot)
        open_ = [p for p in places if (not strict or p.named(preferred))
                 and self.rules.has_room(p, ours[p.key], unseen[p.key])
                 and self.rules.past_stagger(self.last_start.get(p.key), now)]
        chosen = self.rules.choose(open_, self.last_start, preferred)
        if chosen is None:
            self.refused += 1
            return None
        self.last_start[chosen.key] = now
        ttl = self.ttl_s if duration_s is None else duration_s + self.ttl_s
        lease = Lease(uuid.uuid4().hex, chosen.address or None, chosen.uri or None, holder, now + ttl, now)
        self.leases[lease.id] = lease
        return lease

    def attach(self, lease_id: str, stop: tuple[str, str]) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.stop = stop
            lease.attached = self.clock()

    def release(self, lease_id: str) -> tuple[str, str] | None:
        """End a lease; returns how to stop its stream (for a holder that died), if one was attached."""
        lease = self.leases.pop(lease_id, None)
        return lease.stop if lease else None

    def state(self) -> dict[str, Any]:
        self._expire()
        return {"leases": len(self.leases), "budget": self.budget(), "refused": self.refused,
                "capacity": self.snapshot.summary()}


def read_capacity(scenario: Scenario, gateway_url: str) -> CapacitySnapshot:
    """A snapshot from the scenario's capacity source (the gateway's, NaaP's, or the static count)."""
    source = scenario.target.capacity
    model = scenario.workflow.pipeline
    if isinstance(source, StaticCapacity):
        return static_capacity(source.slots, model)
    target = source.url if isinstance(source, NaapCapacity) else f"{gateway_url.rstrip('/')}/getNetworkCapabilities"
    snapshot = parse_capacity(_get_json(target, scenario.target.verify_tls), model)
    if isinstance(source, NaapCapacity) and source.discover_url:
        rows = _get_json(source.discover_url, scenario.target.verify_tls,
                         params={"caps": f"live-video-to-video/{model}"})
        targets = parse_naap_discovery(rows, model)
        note = (f"NaaP discovery lists {len(targets)} orchestrator(s) for {model!r}: sessions are spread across "
                f"them by service URI",) if targets else (f"NaaP discovery lists no orchestrator for {model!r}",)
        snapshot = dataclasses.replace(snapshot, targets=targets, notes=snapshot.notes + note)
    return snapshot


def _get_json(url: str, verify: bool, params: dict[str, str] | None = None) -> Any:
    try:
        resp = httpx.get(url, params=params, timeout=10, verify=verify)
        resp.raise_for_status()
        return resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CapacityError(f"cannot read capacity from {url}: {exc}") from None


class BrokerActor:
    """The campaign's one broker, as an async Ray actor (wrapped by the driver with ``ray.remote``).

    It starts from the driver's first snapshot and re-reads the source every ``refresh_s``
    (a source that cannot be read keeps the last snapshot, with a warning in the actor's log).
    """

    def __init__(self, scenario: dict[str, Any], gateway_url: str, snapshot: CapacitySnapshot) -> None:
        self.scenario = Scenario.model_validate(scenario)
        self.url = gateway_url
        self.broker = SlotBroker(self.scenario.capacity, snapshot)
        self.broker.update(snapshot)
        source = self.scenario.target.capacity
        self.refresh_s = None if isinstance(source, StaticCapacity) else max(REFRESH_MIN_S, source.refresh_s)
        self.refreshes = 0
        self._task: asyncio.Task[Any] | None = None

    async def _refresh(self) -> None:
        assert self.refresh_s is not None, "a static source is never refreshed"
        while True:
            await asyncio.sleep(self.refresh_s)
            taken_at = self.broker.clock()
            try:
                snapshot = await asyncio.to_thread(read_capacity, self.scenario, self.url)
            except CapacityError as exc:
                log.warning("%s", exc)
                continue
            self.broker.update(snapshot, taken_at)
            self.refreshes += 1

    def _ensure_refresh(self) -> None:
        if self._task is None and self.refresh_s is not None:
            self._task = asyncio.ensure_future(self._refresh())

    async def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
                    strict: bool = False) -> dict[str, Any] | None:
        self._ensure_refresh()
        lease = self.broker.lease(holder, preferred, duration_s, strict)
        return None if lease is None else {"id": lease.id, "orchestrator": lease.orchestrator,
                                           "orchestrator_uri": lease.orchestrator_uri}

    async def attach(self, lease_id: str, method: str, url: str) -> None:
        self.broker.attach(lease_id, (method, url))

    async def release(self, lease_id: str) -> tuple[str, str] | None:
        return self.broker.release(lease_id)

    async def state(self) -> dict[str, Any]:
        self._ensure_refresh()
        return {**self.broker.state(), "refreshes": self.refreshes}

    async def snapshot(self) -> CapacitySnapshot:
        """The capacity it leases against now (the monitor's targets come from it)."""
        self._ensure_refresh()
        return self.broker.snapshot
