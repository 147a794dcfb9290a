"""The control-plane simulation (bench/control_plane.py) at a small size: the real dispatcher, slot broker and
coverage rules keep every cap, and the simulation's own checker catches a broker that breaks one (fakes of a
broken broker, named so), so a run that says "every cap held" cannot be a checker that never looks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleet.coverage import Coverage
from fleet.rules import CapacityRules
from fleet.runtime.broker import SlotBroker
from fleet.scenario import CapacityPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from control_plane import POLICY, simulate  # noqa: E402

ORCHESTRATORS, PER_HOUR = 50, 2000


def test_a_small_network_over_two_hours_keeps_every_cap():
    out = simulate(ORCHESTRATORS, PER_HOUR, 2.0, seed=3)
    assert out["caps_held"], out["first_breach"]
    assert out["checked"]["seconds"] >= 2 * 3600
    assert out["checked"]["grants"] == out["campaign"]["started"] + out["monitor"]["started"]
    assert out["peak_leases"] == out["lease_budget"] > 0          # the share of the network was reached, not passed
    assert out["campaign"]["skipped_lease_wait"] > 0               # ... and held sessions back
    assert out["campaign"]["refused_by_gateway"] > 0
    assert out["monitor"]["started"] > 5 and out["monitor"]["skipped"] > 0   # the campaign holds most places


class OverGrantingBroker(SlotBroker):
    """A fake broken broker: no budget at all (the share of the network and the idle reserve ignored)."""

    def budget(self) -> int:
        return 10**9


class _Loosened(SlotBroker):
    """A fake broken broker: leases by rules looser than the policy it was given (``loosen``)."""

    loosen: dict[str, object] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rules = CapacityRules(self.policy.model_copy(update=self.loosen), self.ticks_per_s)


class StaggerIgnoringBroker(_Loosened):
    loosen = {"stagger_s": 0.0}


class PerOrchestratorIgnoringBroker(_Loosened):
    loosen = {"max_per_orchestrator": 3, "stagger_s": 0.0}


class ReserveIgnoringBroker(_Loosened):
    loosen = {"idle_reserve": 0}


LOOSE = CapacityPolicy(max_fraction=1.0, idle_reserve=40, max_per_orchestrator=3, stagger_s=0.0, lease_wait_s=30.0)


@pytest.mark.parametrize("broker, policy, cap", [
    (OverGrantingBroker, POLICY, "max_fraction"),
    (StaggerIgnoringBroker, POLICY.model_copy(update={"max_fraction": 1.0, "max_per_orchestrator": 3}), "stagger"),
    (PerOrchestratorIgnoringBroker, POLICY.model_copy(update={"max_fraction": 1.0, "stagger_s": 0.0}),
     "max_per_orchestrator"),
    (ReserveIgnoringBroker, LOOSE, "idle_reserve"),
])
def test_a_broker_that_breaks_a_cap_is_caught(broker, policy, cap):
    held = simulate(ORCHESTRATORS, PER_HOUR * 5, 0.5, seed=3, policy=policy)   # the real broker, same run
    assert held["caps_held"], held["first_breach"]
    out = simulate(ORCHESTRATORS, PER_HOUR * 5, 0.5, seed=3, broker_cls=broker, policy=policy)
    assert not out["caps_held"]
    assert out["first_breach"].split(": ")[1] == cap, out["first_breach"]


class OverSpendingCoverage(Coverage):
    """A fake broken monitor: paced by its period only, its daily budget ignored."""

    def budget_s(self, total_slots: int) -> float:
        return float("inf")

    def interval(self, targets: int, total_slots: int) -> float:
        return self.every_s / max(1, targets)


def test_a_monitor_that_overspends_its_daily_budget_is_caught():
    budget = 2e-5   # of ~150 slots: about 260 slot-seconds a day, eight 30 s sessions
    held = simulate(ORCHESTRATORS, 100, 1.0, seed=3, daily_budget=budget)
    assert held["caps_held"], held["first_breach"]
    assert 0 < held["monitor"]["peak_share_of_daily_budget"] <= 1.0   # paced by the budget: one session an hour
    out = simulate(ORCHESTRATORS, 100, 1.0, seed=3, daily_budget=budget, coverage_cls=OverSpendingCoverage)
    assert not out["caps_held"]
    assert out["first_breach"].split(": ")[1] == "daily_budget", out["first_breach"]
