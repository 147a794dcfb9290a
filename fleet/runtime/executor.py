"""The Ray side of running sessions: one slot broker, one runner per region, and the sessions in flight.

``RayExecutor`` is what the campaign (``fleet run``) and the monitor (``fleet monitor``) share: it
starts the broker actor and the region runners, asks the broker for a lease, starts a session on its
region's runner, and hands back each session as it finishes: its row, or why it failed as a tester
failure. Every wait on Ray has a deadline, and Ray's errors are mapped here and nowhere else:

- a session's own failure (its runner died, Ray lost its result) becomes its row, a tester failure;
- the machinery's failure (no runner started within ``placement.start_timeout_s``, e.g. a region that
  no node offers; the broker lost or silent) is a ``TesterError``, which the drivers end on: they
  stop every live session, store what they have, print the summary and exit 4;

- a runner that dies (its process killed, its node lost) fails its in-flight sessions as ``tester``
  failures (``runner_died``); the executor stops their streams at the gateway (the broker knows how,
  from the lease) and starts a new runner for the region. A stream it cannot stop (go-livepeer has no
  stop call: the gateway drops it once ICE fails) keeps its lease for ``ORPHAN_HOLD_S``, so the slot is
  not leased again while the gateway still runs the orphan and the campaign's caps hold at the gateway;
- ``stop_all`` ends every live session (each tears its stream down) and, for a session with no
  result within the grace, stops its stream itself;
- the broker is placed on the driver's node: a lost region node costs that region's sessions, not the run;
- a broker that missed a deadline (a lease, a release) is sent releases without waiting for them until
  it answers again: a silent broker costs one deadline, not one per live session.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Any

from fleet.capacity import CapacitySnapshot
from fleet.errors import AnyErrorClass, TesterError
from fleet.results.row import SessionRow
from fleet.runtime.job import Job
from fleet.scenario import Scenario

__all__ = ["Finished", "RayExecutor", "REAPED", "RUNNER_CPU", "STOP_GRACE_S"]

STOP_GRACE_S = 10.0
REAPED = "; the driver stopped its stream"
RUNNER_CPU = 0.1    # a runner's CPU request: the region resource places it, CPUs are its sessions'
LEASE_TIMEOUT_S = 30.0
STATE_TIMEOUT_S = 5.0
ORPHAN_HOLD_S = 15.0  # go-livepeer's ICE failure timeout (10 s, from the tester's death, which we learn later) + margin


def _get(ref: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` with a deadline; no answer or a Ray error is a ``TesterError`` saying ``what``."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        raise TesterError(f"{what} within {timeout_s:g} s") from None
    except RayError as exc:
        raise TesterError(f"{what}: {type(exc).__name__} (the actor is gone)") from None


def _on_this_node() -> Any:
    """The broker's place: the driver's own node. Left to Ray, it lands on any node, a region's among them,
    and losing that node would end the campaign (a lost broker) instead of failing that region's sessions;
    on the driver's node it shares the fate of the campaign, which ends with that node anyway. Hard: Ray 2.60
    spills a soft affinity to another node even when the driver's node has room (a 0-CPU actor included)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


@dataclass
class Finished:
    """A session that ended: its runner's row, or a tester failure (``error`` = (class, detail))."""

    tag: Any                 # what the caller passed to ``start``
    lease_id: str
    region: str
    row: SessionRow | None = None
    error: tuple[AnyErrorClass, str] | None = None

    @property
    def failure(self) -> tuple[AnyErrorClass, str]:
        """(class, detail) of a session that has no row."""
        return self.error or ("no_result", "the runner returned nothing")


@dataclass
class _InFlight:
    tag: Any
    lease_id: str
    region: str
    runner: Any = None   # the runner actor it was started on


class RayExecutor:
    def __init__(self, scenario: Scenario, urls: dict[str, str], snapshot: CapacitySnapshot,
                 host_addresses: list[str] | None, capacity_url: str | None = None) -> None:
        import ray

        from fleet.runtime.broker import BrokerActor

        self.scenario = scenario
        self.urls = urls
        self.hosts = host_addresses
        self.broker: Any = ray.remote(BrokerActor).options(
            num_cpus=0, max_concurrency=1000, max_restarts=0, scheduling_strategy=_on_this_node()).remote(
            scenario.model_dump(mode="json"), capacity_url, snapshot)
        self.runners = {r: self._runner(r) for r in urls}
        self.live: dict[Any, _InFlight] = {}
        self.tester_failures = 0
        self.broker_silent = False   # it missed a deadline: until it answers again, releases are sent, not awaited
        self._polls: dict[str, tuple[Any, float]] = {}   # the broker's answers asked without waiting
        self.held: dict[str, float] = {}   # a dead session's lease -> when to release it (its orphan stream is gone)

    def _runner(self, region: str) -> Any:
        import ray

        from fleet.runtime.runner import RegionRunner

        actor = ray.remote(RegionRunner).options(resources={f"region:{region}": 1}, num_cpus=RUNNER_CPU,
                                                 max_concurrency=10_000, max_restarts=0)
        base = str(self.scenario.base_dir) if self.scenario.base_dir else None
        return actor.remote(region, self.scenario.model_dump(mode="json"), base, self.hosts, self.broker)

    def region_for(self, region: str) -> str:
        return region if region in self.runners else next(iter(self.runners))

    def warm(self) -> float:
        """Start every runner and encode its clip, within ``placement.start_timeout_s``; returns the seconds it
        took. A region whose runner did not start in time is a ``TesterError`` naming it (and whether any node
        of the cluster offers it)."""
        import ray

        t = time.monotonic()
        timeout_s = self.scenario.placement.start_timeout_s
        self.broker.refresh_soon.remote()   # the driver's snapshot is as old as Ray's start-up: refresh meanwhile
        refs = {region: runner.warm.remote() for region, runner in self.runners.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        late = [region for region, ref in refs.items() if ref not in ready]
        if late:
            offered = ray.cluster_resources()  # type: ignore[no-untyped-call]
            region = next((r for r in late if f"region:{r}" not in offered), late[0])
            why = ("no node of the cluster offers it (start one with --resources "
                   f"'{{\"region:{region}\": 1000}}', see cluster.yaml)" if f"region:{region}" not in offered
                   else "its node is busy or starting")
            raise TesterError(f"the runner for region {region!r} did not start within {timeout_s:g} s "
                              f"(placement.start_timeout_s): {why}")
        for region, ref in refs.items():
            _get(ref, STATE_TIMEOUT_S, f"the runner for region {region!r} failed to start")
        return round(time.monotonic() - t, 3)

    def lease(self, region: str, preferred: str | None, duration_s: float,
              strict: bool = False) -> dict[str, Any] | None:
        """A slot from the broker, or None when the caps leave none now (``strict``: on ``preferred`` only)."""
        self._release_held(time.monotonic())   # with no session live, poll() is not called to free them
        lease: dict[str, Any] | None = self._ask(self.broker.lease.remote(region, preferred, duration_s, strict),
                                                 "a lease")
        return lease

    def evidence(self, preferred: str | None) -> dict[str, Any]:
        """The capacity evidence of a skip aimed at ``preferred`` (fleet.runtime.broker.SlotBroker.evidence);
        {} when the broker does not answer (the next lease says why)."""
        try:
            evidence: dict[str, Any] = _get(self.broker.evidence.remote(preferred), STATE_TIMEOUT_S, "evidence")
            return evidence
        except TesterError:
            return {}

    def snapshot(self) -> CapacitySnapshot:
        """The capacity the broker leases against now (refreshed every ``refresh_s``)."""
        snapshot: CapacitySnapshot = self._ask(self.broker.snapshot.remote(), "its capacity")
        return snapshot

    def _ask(self, ref: Any, what: str) -> Any:
        try:
            answer = _get(ref, LEASE_TIMEOUT_S, f"the slot broker did not answer {what}")
        except TesterError:
            self.broker_silent = True
            raise
        self.broker_silent = False
        return answer

    def start(self, region: str, job: Job, lease_id: str, tag: Any) -> None:
        runner = self.runners[region]
        ref = runner.run_session.remote(replace(job, lease_id=lease_id))
        self.live[ref] = _InFlight(tag, lease_id, region, runner)

    def poll(self, timeout: float) -> list[Finished]:
        """Sessions that finished within ``timeout`` (waits at most that long)."""
        import ray

        self._release_held(time.monotonic())
        if not self.live:
            return []
        ready, _ = ray.wait(list(self.live), num_returns=len(self.live), timeout=timeout)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: Any) -> Finished:
        import ray
        from ray.exceptions import RayActorError, RayError

        info = self.live.pop(ref)
        done = Finished(info.tag, info.lease_id, info.region)
        try:
            done.row = ray.get(ref, timeout=STATE_TIMEOUT_S)
            self.release(info.lease_id, died=False)
        except RayActorError as exc:
            self.tester_failures += 1
            reaped = self._reap(info.lease_id)
            done.error = ("runner_died", type(exc).__name__ + (REAPED if reaped else ""))
            # the region's runner is asked once: the sessions of a runner already replaced need no check (a
            # node loss ends many sessions at once, and each check may wait its deadline for a runner that is
            # still being placed)
            if info.runner is self.runners[info.region] and not self._alive(info.runner):
                print(f"fleet: the runner for region {info.region} died; its sessions count as tester failures "
                      "and a new runner takes over", file=sys.stderr, flush=True)
                self.runners[info.region] = self._runner(info.region)
        except RayError as exc:
            self.tester_failures += 1
            self._reap(info.lease_id)
            done.error = ("ray_error", f"{type(exc).__name__}: {exc}"[:200])
        return done

    def release(self, lease_id: str, died: bool) -> bool:
        """Free a lease; when its tester died, stop its stream at the gateway. True if we stopped one."""

        from fleet.probe.adapters import stop_stream

        if not lease_id:
            return False
        if self.broker_silent:   # n sessions to release must not cost n more deadlines (stop_all's grace holds)
            from ray.exceptions import RayError

            try:
                self.broker.release.remote(lease_id)
            except RayError:  # a lost broker: the lease expires with it
                pass
            return False
        try:
            stop = _get(self.broker.release.remote(lease_id), STATE_TIMEOUT_S, "release")
        except TesterError:  # a lost broker: the lease expires with it
            self.broker_silent = True
            return False
        self.broker_silent = False
        if not died or stop is None:
            return False
        env = self.scenario.target.token_env
        return stop_stream(stop[0], stop[1], os.environ.get(env) if env else None)

    def _reap(self, lease_id: str) -> bool:
        """A session that died with its runner: stop its stream and free its lease (True), or, with no way to
        stop it, hold the lease until the gateway has dropped the orphan stream (False)."""
        from fleet.probe.adapters import stop_stream

        if not lease_id:
            return False
        stop = None
        if not self.broker_silent:
            try:
                stop = _get(self.broker.stop_of.remote(lease_id), STATE_TIMEOUT_S, "stop_of")
            except TesterError:  # a lost broker: the lease expires with it
                self.broker_silent = True
        env = self.scenario.target.token_env
        if stop is not None and stop_stream(stop[0], stop[1], os.environ.get(env) if env else None):
            self.release(lease_id, died=False)
            return True
        self.held[lease_id] = time.monotonic() + ORPHAN_HOLD_S
        return False

    def _release_held(self, now: float) -> None:
        """Free the held leases whose orphan streams are gone by ``now``."""
        for lease_id, due in list(self.held.items()):
            if due <= now:
                del self.held[lease_id]
                self.release(lease_id, died=False)

    @staticmethod
    def _alive(actor: Any) -> bool:
        try:
            _get(actor.live.remote(), STATE_TIMEOUT_S, "live")
            return True
        except TesterError:  # no answer: a dead runner
            return False

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[Finished]:
        """Stop every live session (each tears its stream down) and collect what they measured; a session
        with no result within the grace has its stream stopped here."""
        import ray

        from ray.exceptions import RayError

        for actor in self.runners.values():
            try:
                actor.stop_all.remote()
            except RayError:  # a dead runner: its sessions are reaped below
                pass
        if not self.live:
            return []
        ready, _ = ray.wait(list(self.live), num_returns=len(self.live), timeout=grace_s)
        out = []
        for ref in list(self.live):
            if ref in ready:
                done = self._collect(ref)
                if done.row is not None:
                    out.append(done)
                    continue
                out.append(Finished(done.tag, done.lease_id, done.region, error=("stopped", done.failure[1])))
                continue
            info = self.live.pop(ref)
            reaped = self.release(info.lease_id, died=True)
            out.append(Finished(info.tag, info.lease_id, info.region,
                                error=("stopped", "no result within the stop grace" + (REAPED if reaped else ""))))
        return out

    def _poll(self, what: str, ask: Callable[[], Any], every_s: float) -> Any:
        """An answer of the broker, asked without waiting: a new one at most every ``every_s``, else None."""
        import ray

        ref, asked = self._polls.get(what, (None, 0.0))
        answer = None
        if ref is not None and ray.wait([ref], timeout=0)[0]:
            try:
                answer = _get(ref, STATE_TIMEOUT_S, what)
            except TesterError:  # informative only: a lost broker shows at the next lease
                answer = None
            ref = None
        if ref is None and time.monotonic() - asked >= every_s:
            ref, asked = ask(), time.monotonic()
        self._polls[what] = (ref, asked)
        return answer

    def broker_state(self, every_s: float) -> dict[str, Any] | None:
        """The broker's state (leases, budget, the capacity's age), asked without waiting."""
        state: dict[str, Any] | None = self._poll("state", self.broker.state.remote, every_s)
        return state

    def capacity_reads(self, every_s: float) -> list[CapacitySnapshot]:
        """The capacity snapshots the broker read since the last answer, asked without waiting."""
        reads: list[CapacitySnapshot] | None = self._poll("capacity reads", self.broker.take_reads.remote, every_s)
        return reads or []

    def final_capacity_reads(self) -> list[CapacitySnapshot]:
        """The reads in flight and those the broker holds now (waits up to a deadline; none without)."""
        ref, _ = self._polls.pop("capacity reads", (None, 0.0))
        reads: list[CapacitySnapshot] = []
        try:
            if ref is not None:
                reads += _get(ref, STATE_TIMEOUT_S, "capacity reads") or []
            reads += _get(self.broker.take_reads.remote(), STATE_TIMEOUT_S, "capacity reads")
        except TesterError:   # the series is informative: a lost broker's last reads are lost with it
            pass
        return reads

    def final_state(self) -> dict[str, Any]:
        """The broker's state at the run's end: the leases still held for orphan streams go back first."""
        self._release_held(float("inf"))
        return self.state_now()

    def state_now(self) -> dict[str, Any]:
        """The broker's state now, changing nothing (waits for it, up to a deadline; {} without an answer)."""
        try:
            state: dict[str, Any] = _get(self.broker.state.remote(), STATE_TIMEOUT_S, "state")
            return state
        except TesterError:  # the state is informative only
            return {}
