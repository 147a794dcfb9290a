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
import heapq
import logging
import time
import uuid
from urllib.parse import urlsplit
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleet.capacity import CapacitySnapshot, parse_capacity, parse_naap_discovery, static_capacity
from fleet.errors import CapacityError
from fleet.rules import CapacityRules, Place, PlaceOrder
from fleet.runtime.job import STALE_REFRESHES
from fleet.scenario import CapacityPolicy, NaapCapacity, Scenario, StaticCapacity

__all__ = ["BrokerActor", "CLI_PORT", "Lease", "SlotBroker", "capacity_url", "read_capacity"]

log = logging.getLogger("fleet.broker")
REFRESH_MIN_S = 1.0
READS_KEPT = 1000   # capacity reads the broker holds until the driver takes them (the oldest go first)


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
    idle: int | None = None               # the evidence: the place's idle slots in the snapshot it was leased on
    age_s: float | None = None            # ... and how long before the lease that snapshot was read

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
        self._order = PlaceOrder(self.rules)
        # Kept as leases come and go, not recounted at every lease (that was O(live leases) per lease): our
        # leases per place, those the snapshot cannot know of, and when each lease expires (a heap).
        self._ours: Counter[str | None] = Counter()
        self._unseen_n: Counter[str | None] = Counter()
        self._expiry: list[tuple[float, str]] = []
        for lease in self.leases.values():
            self._count(lease, 1)

    def _is_unseen(self, lease: Lease) -> bool:
        return lease.attached is None or lease.attached >= self.snapshot_at  # a tie: assume unseen

    def _count(self, lease: Lease, n: int) -> None:
        """Count a lease in (``n`` 1) or out (-1)."""
        self._ours[lease.key] += n
        if self._is_unseen(lease):
            self._unseen_n[lease.key] += n
        if n > 0:
            heapq.heappush(self._expiry, (lease.expires, lease.id))

    def _ordered(self) -> PlaceOrder:
        """The snapshot's places (fleet.rules) in the rules' order, worked out once per snapshot, not per lease."""
        if self._order.rules is not self.rules:   # its places are the rules': kept only while they hold
            self._order = PlaceOrder(self.rules)
        if self._order.snapshot is not self.snapshot:
            self._order.refresh(self.snapshot, self.last_start)
        return self._order

    def _expire(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            lid = heapq.heappop(self._expiry)[1]
            lease = self.leases.get(lid)
            if lease is not None and lease.expires <= now:
                del self.leases[lid]
                self._count(lease, -1)

    def update(self, snapshot: CapacitySnapshot, taken_at: float | None = None) -> None:
        """New capacity, read at ``taken_at``: it counts streams leased before then as in use."""
        self.snapshot = snapshot
        self.snapshot_at = self.clock() if taken_at is None else taken_at
        self._unseen_n = Counter(lease.key for lease in self.leases.values() if self._is_unseen(lease))

    def _unseen(self) -> Counter[str | None]:
        """Our leases the snapshot cannot know of, per place: their streams did not exist yet when it was read."""
        return self._unseen_n

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
        ours, unseen = self._ours, self._unseen_n

        def open_(p: Place) -> bool:
            return self.rules.has_room(p, ours[p.key], unseen[p.key]) and \
                self.rules.past_stagger(self.last_start.get(p.key), now)

        order = self._ordered()   # the preferred place first (the rules' order), else the least recently started
        named = order.named_places(preferred) if preferred is not None else []
        chosen = self.rules.choose([p for p in named if open_(p)], self.last_start, preferred)
        if chosen is None and not strict:
            chosen = order.first(open_)
        if chosen is None:
            self.refused += 1
            return None
        self.last_start[chosen.key] = now
        order.started(chosen.key, now)
        ttl = self.ttl_s if duration_s is None else duration_s + self.ttl_s
        known = bool(self.snapshot.orchestrators) or chosen.key is None   # discovered URIs: slots unknown
        lease = Lease(uuid.uuid4().hex, chosen.address or None, chosen.uri or None, holder, now + ttl, now,
                      idle=chosen.idle if known else None,
                      age_s=None if self.snapshot_at <= -1e18 else round((now - self.snapshot_at) / (self.ticks_per_s or 1), 3))
        self.leases[lease.id] = lease
        self._count(lease, 1)
        return lease

    def evidence(self, preferred: str | None) -> dict[str, Any]:
        """What a capacity skip aimed at ``preferred`` (address or URI) stores: that orchestrator's idle slots
        in the snapshot the broker holds (None when it names none) and the snapshot's age."""
        idle = next((o.idle for o in self.snapshot.orchestrators if preferred in (o.address, o.uri)), None) \
            if preferred else None
        age = None if self.snapshot_at <= -1e18 else round((self.clock() - self.snapshot_at) / (self.ticks_per_s or 1), 3)
        return {"target_idle_slots": idle, "capacity_age_s": age}

    def attach(self, lease_id: str, stop: tuple[str, str]) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            self._count(lease, -1)
            lease.stop = stop
            lease.attached = self.clock()
            self._ours[lease.key] += 1   # counted back in (its expiry is already in the heap)
            if self._is_unseen(lease):
                self._unseen_n[lease.key] += 1

    def stop_of(self, lease_id: str) -> tuple[str, str] | None:
        """How to stop a lease's stream, the lease kept: its holder died, and the slot stays taken at the
        gateway until the stream is gone."""
        lease = self.leases.get(lease_id)
        return lease.stop if lease else None

    def release(self, lease_id: str) -> tuple[str, str] | None:
        """End a lease; returns how to stop its stream (for a holder that died), if one was attached."""
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            self._count(lease, -1)
        return lease.stop if lease else None

    def state(self) -> dict[str, Any]:
        self._expire()
        return {"leases": len(self.leases), "budget": self.budget(), "refused": self.refused,
                "capacity": self.snapshot.summary()}


CLI_PORT = 5935   # go-livepeer's default -cliAddr port


def capacity_url(scenario: Scenario, gateway_url: str, override: str | None = None,
                 local_cli: str | None = None) -> str | None:
    """Where the scenario's capacity is read: NaaP's URL; for the gateway's, ``override`` (``--capacity-url``),
    else the scenario's ``target.capacity.url``, else the local reference gateway's CLI URL, else the
    gateway's host at go-livepeer's default CLI port; None for a static count."""
    source = scenario.target.capacity
    if isinstance(source, StaticCapacity):
        return None
    if isinstance(source, NaapCapacity):
        return source.url
    if override or source.url or local_cli:
        return override or source.url or local_cli
    host = urlsplit(gateway_url).hostname or "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{CLI_PORT}"


def read_capacity(scenario: Scenario, url: str | None, flag: str | None = None) -> CapacitySnapshot:
    """A snapshot from the scenario's capacity source (the gateway's CLI server at ``url``, NaaP's, or the
    static count), stamped with when it was read. A source that cannot be read is a CapacityError that
    names the scenario line of the source (or ``flag``, the command-line option that gave the URL)."""
    source = scenario.target.capacity
    model = scenario.workflow.pipeline
    if isinstance(source, StaticCapacity):
        return static_capacity(source.slots, model)
    assert url is not None, "capacity_url gives every source but a static count a URL"
    where = flag or scenario.locate("target", "capacity")
    hint = "" if isinstance(source, NaapCapacity) else (
        " (go-livepeer serves it from its CLI server, -cliAddr, default 127.0.0.1:5935: set target.capacity.url "
        "or --capacity-url)")
    target = url if isinstance(source, NaapCapacity) or url.rstrip("/").endswith("/getNetworkCapabilities") \
        else f"{url.rstrip('/')}/getNetworkCapabilities"
    read_at = time.time()
    snapshot = parse_capacity(_get_json(target, scenario.target.verify_tls, where, hint), model)
    if isinstance(source, NaapCapacity) and source.discover_url:
        rows = _get_json(source.discover_url, scenario.target.verify_tls, where, "",
                         params={"caps": f"live-video-to-video/{model}"})
        targets = parse_naap_discovery(rows, model)
        note = (f"NaaP discovery lists {len(targets)} orchestrator(s) for {model!r}: sessions are spread across "
                f"them by service URI",) if targets else (f"NaaP discovery lists no orchestrator for {model!r}",)
        snapshot = dataclasses.replace(snapshot, targets=targets, notes=snapshot.notes + note)
    return dataclasses.replace(snapshot, read_unix=round(read_at, 3))


def _get_json(url: str, verify: bool, where: str, hint: str, params: dict[str, str] | None = None) -> Any:
    try:
        resp = httpx.get(url, params=params, timeout=10, verify=verify)
        resp.raise_for_status()
        return resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CapacityError(f"{where}: cannot read capacity from {url}: {type(exc).__name__}: {exc}{hint}") \
            from None


class BrokerActor:
    """The campaign's one broker, as an async Ray actor (wrapped by the driver with ``ray.remote``).

    It starts from the driver's first snapshot and re-reads the source every ``refresh_s``
    (a source that cannot be read keeps the last snapshot, with a warning in the actor's log).
    """

    def __init__(self, scenario: dict[str, Any], capacity_url: str | None, snapshot: CapacitySnapshot) -> None:
        self.scenario = Scenario.model_validate(scenario)
        self.url = capacity_url
        self.broker = SlotBroker(self.scenario.capacity, snapshot)
        age = 0.0 if snapshot.read_unix is None else max(0.0, time.time() - snapshot.read_unix)
        self.broker.update(snapshot, self.broker.clock() - age)   # as old as the driver's read
        source = self.scenario.target.capacity
        self.refresh_s = None if isinstance(source, StaticCapacity) else max(REFRESH_MIN_S, source.refresh_s)
        self.refreshes = 0
        self.reads: deque[CapacitySnapshot] = deque(maxlen=READS_KEPT)   # for the capacity series
        self._task: asyncio.Task[Any] | None = None

    async def _refresh(self) -> None:
        """Read the source again one ``refresh_s`` after the last read or try (at once when the snapshot is
        already that old); a read that fails keeps the last snapshot, and says how old it is."""
        assert self.refresh_s is not None, "a static source is never refreshed"
        tried = self.broker.snapshot_at
        while True:
            await asyncio.sleep(max(0.0, self.refresh_s - (self.broker.clock() - tried)))
            tried = self.broker.clock()
            try:
                snapshot = await asyncio.to_thread(read_capacity, self.scenario, self.url)
            except CapacityError as exc:
                log.warning("%s; leasing on the snapshot read %.0f s ago", exc, tried - self.broker.snapshot_at)
                continue
            self.broker.update(snapshot, tried)
            self.refreshes += 1
            self.reads.append(snapshot)

    def _ensure_refresh(self) -> None:
        if self._task is None and self.refresh_s is not None:
            self._task = asyncio.ensure_future(self._refresh())

    async def refresh_soon(self) -> None:
        """Start refreshing now (else at the first lease): a snapshot older than ``refresh_s`` is read again at once."""
        self._ensure_refresh()

    async def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
                    strict: bool = False) -> dict[str, Any] | None:
        self._ensure_refresh()
        lease = self.broker.lease(holder, preferred, duration_s, strict)
        return None if lease is None else {"id": lease.id, "orchestrator": lease.orchestrator,
                                           "orchestrator_uri": lease.orchestrator_uri, "idle": lease.idle,
                                           "capacity_age_s": lease.age_s}

    async def evidence(self, preferred: str | None) -> dict[str, Any]:
        return self.broker.evidence(preferred)

    async def attach(self, lease_id: str, method: str, url: str) -> None:
        self.broker.attach(lease_id, (method, url))

    async def stop_of(self, lease_id: str) -> tuple[str, str] | None:
        return self.broker.stop_of(lease_id)

    async def release(self, lease_id: str) -> tuple[str, str] | None:
        return self.broker.release(lease_id)

    async def state(self) -> dict[str, Any]:
        self._ensure_refresh()
        age = round(self.broker.clock() - self.broker.snapshot_at, 1)
        stale = self.refresh_s is not None and age > STALE_REFRESHES * self.refresh_s
        return {**self.broker.state(), "refreshes": self.refreshes, "capacity_age_s": age, "capacity_stale": stale}

    async def take_reads(self) -> list[CapacitySnapshot]:
        """The snapshots read since the last call, oldest first (the driver stores the capacity series)."""
        self._ensure_refresh()
        reads = list(self.reads)
        self.reads.clear()
        return reads

    async def snapshot(self) -> CapacitySnapshot:
        """The capacity it leases against now (the monitor's targets come from it)."""
        self._ensure_refresh()
        return self.broker.snapshot
