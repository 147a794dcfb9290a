"""The driver's lease deadline over real Ray: behind the real ``Dispatcher`` and ``RayExecutor``, a slot broker
that never answers a lease ends the dispatcher's step with a ``TesterError`` at
``fleet.runtime.executor.LEASE_TIMEOUT_S`` (shrunk here), the session neither started nor skipped (the drivers
end the run on that error, exit 4), and the broker's other calls still answer meanwhile.
And a broker that answers nothing (a frozen node) costs ``stop_all`` one deadline, not one per live session.
``bench/lease_throughput.py`` measures the lease's deadline at the fleet's own value, and the lease throughput.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from fleet.capacity import static_capacity
from fleet import errors
from fleet.plan import PlannedSession
from fleet.runtime import broker as broker_module
from fleet.runtime import executor as executor_module
from fleet.runtime import runner as runner_module
from fleet.runtime.broker import BrokerActor
from fleet.runtime.dispatch import Dispatcher
from fleet.runtime.executor import RayExecutor
from fleet.runtime.job import Job
from fleet.scenario import Scenario, load_scenario

REPO = Path(__file__).resolve().parent.parent
REGION = "local"          # scenarios/reference.yaml's one region
DEADLINE_S = 2.0          # LEASE_TIMEOUT_S, shrunk
STATE_S = 1.0             # STATE_TIMEOUT_S (a release's deadline), shrunk
LIVE = 24                 # live sessions when the broker falls silent: one release deadline each would be 24 s
SLACK_S = 30.0            # the step ends within the deadline plus this, else the deadline did not hold

pytestmark = pytest.mark.slow  # a real local Ray


def never_answering_broker() -> type:
    """Defined in a function so that Ray ships the class itself to its worker (this module is not importable there)."""

    class NeverAnsweringBrokerFake(BrokerActor):
        """A fake: the real broker whose lease never returns (every other call answers)."""

        async def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
                        strict: bool = False) -> dict[str, Any] | None:
            await asyncio.Event().wait()
            raise AssertionError("never set")

    return NeverAnsweringBrokerFake


def silent_broker() -> type:
    class SilentBrokerFake(BrokerActor):
        """A fake: the broker of a frozen node, whose leases and releases never return."""

        async def lease(self, holder: str, preferred: str | None = None, duration_s: float | None = None,
                        strict: bool = False) -> dict[str, Any] | None:
            await asyncio.Event().wait()
            raise AssertionError("never set")

        async def release(self, lease_id: str) -> tuple[str, str] | None:
            await asyncio.Event().wait()
            raise AssertionError("never set")

    return SilentBrokerFake


def frozen_runner() -> type:
    class FrozenRunnerFake(runner_module.RegionRunner):
        """A fake: a runner of a frozen node, whose sessions never end (stop_all is heard, and ignored)."""

        async def run_session(self, job: Job) -> Any:
            await asyncio.Event().wait()
            raise AssertionError("never set")

    return FrozenRunnerFake


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.2", resources={f"region:{REGION}": 1000})
    try:
        yield ray
    finally:
        ray.shutdown()


def in_time(call: Any, deadline_s: float) -> list[Any]:
    """``call()``'s result or exception, which must come within ``deadline_s`` (on another thread)."""
    out: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            out.append(call())
        except errors.TesterError as exc:
            out.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(deadline_s), f"no answer within {deadline_s:g} s"
    return out


def static_scenario() -> Scenario:
    """The reference scenario on a static count: the broker never re-reads a source."""
    doc = load_scenario(REPO / "scenarios" / "reference.yaml").model_dump(mode="json")
    doc["target"]["capacity"] = {"source": "static", "slots": 4}
    return Scenario.model_validate(doc)


def test_a_broker_that_never_answers_a_lease_ends_the_dispatch_step_at_the_lease_deadline(local_ray, monkeypatch):
    scenario = static_scenario()
    monkeypatch.setattr(broker_module, "BrokerActor", never_answering_broker())  # RayExecutor starts this one
    monkeypatch.setattr(executor_module, "LEASE_TIMEOUT_S", DEADLINE_S)
    ex = RayExecutor(scenario, {REGION: "http://127.0.0.1:1"}, static_capacity(4, scenario.workflow.pipeline),
                     ["127.0.0.1"], None)
    try:
        assert ex.final_state()["leases"] == 0   # the actor is up and answers
        d = Dispatcher([PlannedSession(0, 0.0, 10.0, REGION, None, None, 1, ())], ex, scenario.capacity.lease_wait_s,
                       lambda s, region: Job(f"s{s.index}", "http://127.0.0.1:1", s.duration_s, ()))
        d.begin()
        errors = in_time(d.step, DEADLINE_S + SLACK_S)   # the dispatcher's lease ends at its deadline
        assert [str(e) for e in errors] == ["the slot broker did not answer a lease within 2 s"]
        assert len(d.waiting) == 1 and not ex.live   # neither started nor skipped: the run ends on the error
        assert ex.final_state()["leases"] == 0       # the broker's other calls answer while a lease hangs
    finally:
        for actor in (ex.broker, *ex.runners.values()):
            local_ray.kill(actor)


def test_a_silent_broker_costs_stop_all_one_deadline_not_one_per_live_session(local_ray, monkeypatch):
    scenario = static_scenario()
    monkeypatch.setattr(broker_module, "BrokerActor", silent_broker())
    monkeypatch.setattr(runner_module, "RegionRunner", frozen_runner())
    monkeypatch.setattr(executor_module, "LEASE_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr(executor_module, "STATE_TIMEOUT_S", STATE_S)
    ex = RayExecutor(scenario, {REGION: "http://127.0.0.1:1"}, static_capacity(LIVE + 1, scenario.workflow.pipeline),
                     ["127.0.0.1"], None)
    try:
        for i in range(LIVE):
            ex.start(REGION, Job(f"s{i}", "http://127.0.0.1:1", 10.0, ()), f"lease-{i}", i)
        d = Dispatcher([PlannedSession(0, 0.0, 10.0, REGION, None, None, 1, ())], ex, scenario.capacity.lease_wait_s,
                       lambda s, region: Job(f"s{s.index}", "http://127.0.0.1:1", s.duration_s, ()))
        d.begin()
        errors = in_time(d.step, DEADLINE_S + SLACK_S)
        assert [str(e) for e in errors] == ["the slot broker did not answer a lease within 2 s"]
        grace_s = 0.5
        # the grace and at most one release's deadline (plus slack), where a deadline per session would be 24 s
        [stopped] = in_time(lambda: ex.stop_all(grace_s), grace_s + STATE_S + LIVE * STATE_S / 2)
        assert sorted(f.tag for f in stopped) == list(range(LIVE))
        assert {f.error for f in stopped} == {("stopped", "no result within the stop grace")}
        assert not ex.live
    finally:
        for actor in (ex.broker, *ex.runners.values()):
            local_ray.kill(actor)
