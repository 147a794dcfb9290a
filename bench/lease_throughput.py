"""Lease throughput over Ray: the real broker actor, leased from several processes at once, and a slow broker.

What runs is the broker ``fleet run`` and ``fleet monitor`` run: ``fleet.runtime.executor.RayExecutor`` starts it
(``ray.remote(BrokerActor)`` with the executor's own options) on a private local Ray, on a synthetic
``CapacitySnapshot`` of ``--orchestrators`` x ``--slots`` idle slots with every cap wide open (all of the network,
no idle reserve, ``--slots`` per orchestrator, no stagger), so the network is never the limit: what is measured is
the actor.

In the fleet one process leases: the driver, one lease at a time (``RayExecutor.lease``: ``ray.get`` with the
deadline ``LEASE_TIMEOUT_S``; the runners only tell the broker how to stop a stream, without waiting). So:

- step ``driver``: the driver's own path, ``RayExecutor.lease`` then ``RayExecutor.release``, in a loop;
- steps ``clients=N`` (N = 1, 2, 4, 8): N Ray actors (``LeaseClient``, zero CPUs requested, as the runners)
  each leasing and releasing in a loop exactly as ``RayExecutor`` does (``ray.get`` with the executor's
  deadlines), all from one start time for ``--duration-s``: leases per second through the one actor, the p50
  and p99 latency of a lease, and both as a ratio to N = 1 of the same run;
- step ``slow``: ``SlowBrokerFake`` (a fake, named so: the real ``BrokerActor`` that sleeps ``--slow-s`` in
  every lease) behind the real ``RayExecutor``: each driver lease waits that long, and the broker's other
  calls still answer meanwhile (it is an async actor);
- step ``never``: ``NeverAnsweringBrokerFake`` (a fake: its lease never returns) behind the real
  ``Dispatcher`` and ``RayExecutor``, one session due: how long the dispatcher's step waits against the
  named deadline (``fleet.runtime.executor.LEASE_TIMEOUT_S``, or ``--lease-timeout-s`` to shrink it), and
  what becomes of the session and the run.

    python bench/lease_throughput.py [--duration-s 5] [--orchestrators 1000] [--slots 4] [--slow-s 1]
                                     [--lease-timeout-s 30]

Prints a line per step and, last, one JSON object. Ray is shut down on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from fleet.capacity import CapacitySnapshot, OrchestratorSlots  # noqa: E402
from fleet.errors import TesterError  # noqa: E402
from fleet.plan import PlannedSession  # noqa: E402
from fleet.runtime import broker as broker_module  # noqa: E402
from fleet.runtime import executor as executor_module  # noqa: E402
from fleet.runtime.broker import BrokerActor  # noqa: E402
from fleet.runtime.dispatch import Dispatcher  # noqa: E402
from fleet.runtime.executor import STATE_TIMEOUT_S, RayExecutor  # noqa: E402
from fleet.runtime.job import Job  # noqa: E402
from fleet.scenario import Scenario, load_scenario  # noqa: E402

SCENARIO = ROOT / "scenarios" / "reference.yaml"
REGION = "local"             # the reference scenario's one region
RAY_IP = "127.0.0.2"         # the private Ray's node address (as fleet run's CampaignOptions.ray_ip)
CLIENTS = (1, 2, 4, 8)
SESSION_S = 20.0             # each lease's session length (its expiry: this plus the broker's ttl_s)
START_AHEAD_S = 1.0          # the clients start together this long after they are told to
STEP_SLACK_S = 60.0          # a step's clients answer within their duration plus this, else the bench fails
SLOW_LEASES = 3              # driver leases timed against SlowBrokerFake


def open_scenario(orchestrators: int, slots: int) -> Scenario:
    """The reference scenario with every cap wide open and a static source (the broker never re-reads)."""
    doc = load_scenario(SCENARIO).model_dump(mode="json")
    doc["target"]["capacity"] = {"source": "static", "slots": orchestrators * slots}
    doc["capacity"] = {**doc["capacity"], "max_fraction": 1.0, "idle_reserve": 0, "max_per_orchestrator": slots,
                       "stagger_s": 0.0}
    return Scenario.model_validate(doc)


def network(scenario: Scenario, orchestrators: int, slots: int) -> CapacitySnapshot:
    """``orchestrators`` x ``slots`` idle slots for the scenario's model."""
    return CapacitySnapshot(scenario.workflow.pipeline, tuple(
        OrchestratorSlots(f"0x{i:040x}", f"https://orch-{i}.test:8935", slots, 0) for i in range(orchestrators)),
        source="gateway")


class LeaseClient:
    """A process that leases as the driver does (``RayExecutor.lease`` / ``release``: ``ray.get`` with the
    executor's deadlines), in a loop from ``start_at`` (wall clock, shared by the clients) for ``duration_s``."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def ready(self) -> bool:
        return True

    def run(self, holder: str, start_at: float, duration_s: float) -> dict[str, Any]:
        import ray

        time.sleep(max(0.0, start_at - time.time()))   # one start for every client (not a synchronisation of ours)
        end = start_at + duration_s
        latencies: list[float] = []
        refused = 0
        while time.time() < end:
            t = time.perf_counter()
            lease = ray.get(self.broker.lease.remote(holder, None, SESSION_S, False),
                            timeout=executor_module.LEASE_TIMEOUT_S)
            latencies.append(time.perf_counter() - t)
            if lease is None:
                refused += 1
                continue
            ray.get(self.broker.release.remote(lease["id"]), timeout=STATE_TIMEOUT_S)
        return {"latencies": latencies, "refused": refused, "ended": time.time()}


def SlowBrokerFake(delay_s: float) -> type:   # noqa: N802 - a class factory: the fake's delay is its parameter
    class SlowBrokerFake(BrokerActor):
        """A fake: the real broker, ``delay_s`` late with every lease (the actor's loop free meanwhile)."""

        async def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
                        strict: bool = False) -> dict[str, Any] | None:
            await asyncio.sleep(delay_s)
            return await super().lease(holder, preferred, duration_s, strict)

    return SlowBrokerFake


class NeverAnsweringBrokerFake(BrokerActor):
    """A fake: the real broker whose lease never returns (every other call answers)."""

    async def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
                    strict: bool = False) -> dict[str, Any] | None:
        await asyncio.Event().wait()
        raise AssertionError("never set")


@contextmanager
def broker_class(cls: type) -> Iterator[None]:
    """``RayExecutor`` starts ``cls`` as its broker (it imports ``BrokerActor`` when it starts one)."""
    real = broker_module.BrokerActor
    broker_module.BrokerActor = cls
    try:
        yield
    finally:
        broker_module.BrokerActor = real


@contextmanager
def lease_timeout(seconds: float) -> Iterator[None]:
    real = executor_module.LEASE_TIMEOUT_S
    executor_module.LEASE_TIMEOUT_S = seconds
    try:
        yield
    finally:
        executor_module.LEASE_TIMEOUT_S = real


def executor(scenario: Scenario, snapshot: CapacitySnapshot) -> RayExecutor:
    return RayExecutor(scenario, {REGION: "http://127.0.0.1:1"}, snapshot, ["127.0.0.1"], None)


def close(ex: RayExecutor) -> None:
    import ray

    for actor in (ex.broker, *ex.runners.values()):
        ray.kill(actor)


def actor_process(name: str) -> psutil.Process:
    """Our Ray's worker running the actor ``name`` (Ray titles it ``ray::<class>``), among this process's children."""
    for p in psutil.Process().children(recursive=True):
        try:
            if any(f"ray::{name}" in part for part in p.cmdline()):
                return p
        except psutil.Error:
            continue
    raise RuntimeError(f"no process of ours runs {name}")


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def with_cpu(step: dict[str, Any], spent_s: float) -> dict[str, Any]:
    """The broker's CPU over the step: per cycle, and its share of one core while the cycles ran."""
    return {**step, "broker_cpu_ms_per_cycle": round(1000 * spent_s / step["leases"], 3),
            "broker_cpu_pct": round(100 * spent_s / (step["leases"] / step["leases_per_s"]), 1)}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def quantiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


def driver_step(ex: RayExecutor, duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration_s:
        t = time.perf_counter()
        lease = ex.lease(REGION, None, SESSION_S)
        latencies.append(time.perf_counter() - t)
        assert lease is not None, "the network is wide open: a refusal means the bench is wrong"
        ex.release(lease["id"], died=False)
    elapsed = time.perf_counter() - t0
    p50, p99 = quantiles(latencies)
    return {"step": "driver", "leases": len(latencies), "leases_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": ms(p50), "p99_ms": ms(p99)}


def clients_step(clients: list[Any], n: int, duration_s: float) -> dict[str, Any]:
    import ray

    start_at = time.time() + START_AHEAD_S
    refs = [c.run.remote(f"client-{i}", start_at, duration_s) for i, c in enumerate(clients[:n])]
    done = ray.get(refs, timeout=START_AHEAD_S + duration_s + STEP_SLACK_S)
    latencies = [x for d in done for x in d["latencies"]]
    refused = sum(d["refused"] for d in done)
    assert not refused, "the network is wide open: a refusal means the bench is wrong"
    elapsed = max(d["ended"] for d in done) - start_at
    p50, p99 = quantiles(latencies)
    return {"step": f"clients={n}", "clients": n, "leases": len(latencies),
            "leases_per_s": round(len(latencies) / elapsed, 1), "p50_ms": ms(p50), "p99_ms": ms(p99)}


def slow_step(scenario: Scenario, snapshot: CapacitySnapshot, delay_s: float) -> dict[str, Any]:
    """Driver leases against a broker ``delay_s`` late; the broker's state asked while a lease is pending."""
    import ray

    with broker_class(SlowBrokerFake(delay_s)):
        ex = executor(scenario, snapshot)
    try:
        ex.final_state()   # the actor is up
        waits = []
        for _ in range(SLOW_LEASES):
            t = time.perf_counter()
            lease = ex.lease(REGION, None, SESSION_S)
            waits.append(time.perf_counter() - t)
            assert lease is not None
            ex.release(lease["id"], died=False)
        pending = ex.broker.lease.remote("pending", None, SESSION_S, False)
        t = time.perf_counter()
        state = ex.final_state()   # STATE_TIMEOUT_S: answers while a lease is pending
        state_s = time.perf_counter() - t
        ray.get(pending, timeout=executor_module.LEASE_TIMEOUT_S)
    finally:
        close(ex)
    return {"step": "slow", "fake": "SlowBrokerFake", "delay_s": delay_s,
            "lease_waits_s": [round(w, 3) for w in waits], "deadline_s": executor_module.LEASE_TIMEOUT_S,
            "state_while_lease_pending_ms": ms(state_s), "state_answered": bool(state)}


def never_step(scenario: Scenario, snapshot: CapacitySnapshot, deadline_s: float) -> dict[str, Any]:
    """The real dispatcher, one session due, a broker whose lease never answers."""
    session = PlannedSession(0, 0.0, SESSION_S, REGION, None, None, 1, ())
    with broker_class(NeverAnsweringBrokerFake):
        ex = executor(scenario, snapshot)
    try:
        ex.final_state()   # the actor is up: the wait measured is the lease's, not the actor's start
        d = Dispatcher([session], ex, scenario.capacity.lease_wait_s,
                       lambda s, region: Job(f"never-{s.index}", "http://127.0.0.1:1", s.duration_s, ()))
        d.begin()
        error = None
        with lease_timeout(deadline_s):
            t = time.perf_counter()
            try:
                d.step()
            except TesterError as exc:
                error = exc
            waited = time.perf_counter() - t
    finally:
        close(ex)
    return {"step": "never", "fake": "NeverAnsweringBrokerFake", "deadline": "fleet.runtime.executor.LEASE_TIMEOUT_S",
            "deadline_s": deadline_s, "waited_s": round(waited, 3), "overshoot_ms": ms(waited - deadline_s),
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "exit_code": None if error is None else type(error).exit_code,
            "session": ("still waiting in the dispatcher's queue (neither started nor skipped)"
                        if len(d.waiting) == 1 and not len(ex.live) else "other"),
            "sessions_started": len(ex.live)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=5.0, help="each throughput step's length")
    ap.add_argument("--orchestrators", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=4, help="idle slots per orchestrator")
    ap.add_argument("--slow-s", type=float, default=1.0, help="SlowBrokerFake's delay per lease")
    ap.add_argument("--lease-timeout-s", type=float, default=executor_module.LEASE_TIMEOUT_S,
                    help="the driver's lease deadline for the never-answering step (default: the fleet's)")
    args = ap.parse_args()

    import ray

    scenario = open_scenario(args.orchestrators, args.slots)
    snapshot = network(scenario, args.orchestrators, args.slots)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address=RAY_IP,
             resources={f"region:{REGION}": 1000})
    try:
        steps: list[dict[str, Any]] = []
        ex = executor(scenario, snapshot)
        try:
            ex.final_state()
            broker = actor_process("BrokerActor")
            spent = cpu_s(broker)
            steps.append(driver_step(ex, args.duration_s))
            steps[-1] = with_cpu(steps[-1], cpu_s(broker) - spent)
            print(json.dumps(steps[-1]), flush=True)
            actor = ray.remote(LeaseClient).options(num_cpus=0)
            clients = [actor.remote(ex.broker) for _ in range(max(CLIENTS))]
            ray.get([c.ready.remote() for c in clients], timeout=STEP_SLACK_S)
            for n in CLIENTS:
                spent = cpu_s(broker)
                steps.append(with_cpu(clients_step(clients, n, args.duration_s), cpu_s(broker) - spent))
                one = next(s for s in steps if s.get("clients") == 1)
                steps[-1].update(ratio_to_1=round(steps[-1]["leases_per_s"] / one["leases_per_s"], 2),
                                 p50_ratio_to_1=round(steps[-1]["p50_ms"] / one["p50_ms"], 2),
                                 p99_ratio_to_1=round(steps[-1]["p99_ms"] / one["p99_ms"], 2))
                print(json.dumps(steps[-1]), flush=True)
            for c in clients:
                ray.kill(c)
        finally:
            close(ex)
        steps.append(slow_step(scenario, snapshot, args.slow_s))
        print(json.dumps(steps[-1]), flush=True)
        steps.append(never_step(scenario, snapshot, args.lease_timeout_s))
        print(json.dumps(steps[-1]), flush=True)
    finally:
        ray.shutdown()
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, CPython {platform.python_version()}",
                      "ray": ray.__version__, "orchestrators": args.orchestrators, "slots": args.slots,
                      "duration_s": args.duration_s, "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
