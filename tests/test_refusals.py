"""An orchestrator that refuses while advertising idle slots: the evidence each session carries, and the
per-orchestrator view over many (fleet.runtime.job.capacity_evidence, fleet.results.refusals).

go-livepeer tries past an orchestrator that refuses the job, errs or times out and ends with "no
orchestrators available" (server/ai_process.go processAIRequest): one session aimed at it cannot tell it
from a full one. The truth here is written out per case, not computed by the code it judges.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleet.capacity import CapacitySnapshot, OrchestratorSlots
from fleet.probe.types import PromptChange
from fleet.results.prometheus import CampaignMetrics
from fleet.results.refusals import refusals
from fleet.results.row import SessionRow
from fleet.results.sink import Batch, tables_of
from fleet.runtime.broker import SlotBroker
from fleet.runtime.job import Job, capacity_evidence
from fleet.scenario import CapacityPolicy

URI = "https://o1:8935"
SKIP = {"outcome": "skipped_no_capacity", "error_class": "no_orchestrators_available"}


def job(idle: int | None = 3, age: float | None = 4.0, uri: str | None = URI) -> Job:
    return Job("s1", "http://gw", 10.0, (PromptChange(0.0, {}),), orchestrator_uri=uri, target_idle=idle,
               capacity_age_s=age)


@pytest.mark.parametrize(("row", "j", "refresh_s", "refused"), [
    (SKIP, job(), 30.0, True),                                    # fresh snapshot, 3 idle slots: refused
    (SKIP, job(age=60.0), 30.0, True),                            # exactly two refreshes old: still fresh
    (SKIP, job(age=60.1), 30.0, False),                           # older: stale, never blamed on it
    (SKIP, job(idle=0), 30.0, False),                             # it said it was full: it was
    (SKIP, job(uri=None), 30.0, False),                           # aimed at no orchestrator: the gateway chose
    (SKIP, job(age=None, idle=None), 30.0, False),                # no snapshot (a static count)
    (SKIP, job(), None, False),                                   # a source with no refresh: age means nothing
    ({"outcome": "skipped_no_capacity", "error_class": "no_slot_leased"}, job(), 30.0, False),  # our own caps
    ({"outcome": "failed", "error_class": "gateway_error"}, job(), 30.0, False),
    ({"outcome": "ok", "error_class": None}, job(), 30.0, False),
])
def test_a_skip_is_a_refusal_only_on_a_fresh_snapshot_that_showed_idle_slots(row, j, refresh_s, refused):
    evidence = capacity_evidence(SessionRow(session_id="s1", **row), j, refresh_s)
    assert evidence == {"target_idle_slots": j.target_idle, "capacity_age_s": j.capacity_age_s,
                        "refused_while_idle": refused}


def test_the_broker_hands_each_lease_its_evidence():
    now = [100.0]
    snap = CapacitySnapshot("m", orchestrators=(OrchestratorSlots("0xa", URI, idle=3, in_use=1),))
    broker = SlotBroker(CapacityPolicy(max_fraction=1.0, idle_reserve=0, stagger_s=0), snap, clock=lambda: now[0])
    broker.update(snap, taken_at=92.5)
    now[0] = 110.0
    lease = broker.lease("h")
    assert (lease.orchestrator_uri, lease.idle, lease.age_s) == (URI, 3, 17.5)
    assert job().leased({"id": lease.id, "orchestrator_uri": URI, "idle": 3, "capacity_age_s": 17.5}).target_idle == 3


def _row(target: str, refused: bool, started: float, error_class: str = "no_orchestrators_available",
         session: str = "s") -> SessionRow:
    return SessionRow(session_id=session, target_orchestrator=target, refused_while_idle=refused,
                      started_at=SessionRow.at(started), outcome="skipped_no_capacity" if refused else "ok",
                      error_class=error_class if refused else None, model="m")


def test_refusals_per_orchestrator_count_share_and_last_seen():
    rows = [_row("a", True, 10.0), _row("a", True, 30.0), _row("a", False, 20.0), _row("a", False, 40.0),
            _row("b", False, 5.0), _row("c", True, 7.0),
            # the broker's own skips were never sent: they are not sessions aimed at it
            replace(_row("a", False, 50.0), outcome="skipped_no_capacity", error_class="no_slot_leased"),
            _row("", True, 60.0)]
    stored = tables_of(rows)["sessions"].to_pylist()   # the summary reads the stored rows
    got = [r.as_dict() for r in refusals(stored)]
    assert got == [{"orchestrator": "a", "refused": 2, "aimed": 4, "share": 0.5, "last_unix": 30.0},
                   {"orchestrator": "c", "refused": 1, "aimed": 1, "share": 1.0, "last_unix": 7.0}]


def test_prometheus_counts_refusals_per_target_with_when_last_seen():
    metrics = CampaignMetrics()
    metrics.add(Batch.of([_row(URI, True, 1000.0, session="1"), _row(URI, True, 1500.0, session="2"),
                          _row(URI, False, 2000.0, session="3")]))
    labels = {"orchestrator": URI, "model": "m"}
    assert metrics.registry.get_sample_value("fleet_sessions_aimed_total", labels) == 3  # the share: 2 of 3
    reg = metrics.registry
    assert reg.get_sample_value("fleet_refused_while_idle_total", labels) == 2
    assert reg.get_sample_value("fleet_refused_while_idle_last_seen_timestamp_seconds", labels) == 1500.0
