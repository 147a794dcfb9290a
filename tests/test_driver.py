"""The one driver (fleet.runtime.driver) in-process: a campaign's plan through the dispatcher and every output,
on a fake executor and a fake clock (no Ray, no gateway) and in-memory outputs (fleet.results.outputs.MemorySink);
and the monitor's prompt schedule honouring prompts.selection as the plan's does.

The fake executor is named so: it stands for RayExecutor (tests/test_cluster.py runs the real one); its
sessions end after their planned length on the fake clock with an ``ok`` row."""

from __future__ import annotations

from typing import Any

import pytest

from fleet import errors
from fleet.capacity import static_capacity
from fleet.plan import make_plan
from fleet.prompts import PoolEntry, Prompt
from fleet.results.outputs import MemorySink, Outputs
from fleet.results.row import SessionRow
from fleet.runtime.campaign import PlanSource, _prompt_lookup
from fleet.runtime.dispatch import Clock
from fleet.runtime.driver import drive
from fleet.runtime.executor import Finished
from fleet.runtime.job import Job
from fleet.runtime.lifecycle import Campaign, CampaignOptions
from fleet.scenario import Scenario

POOL = [PoolEntry("t", 1.0, Prompt(id=f"p{i}", text=f"prompt {i}", category="c")) for i in range(4)]


class FakeExecutor:
    """A fake of RayExecutor: a lease while fewer than ``slots`` run; sessions end ``ok`` after their length on
    the fake clock. ``stop_at``: the run's stop signal comes then; ``lost_at``: the broker is lost then."""

    def __init__(self, c: Campaign, slots: int, stop_at: float | None = None, lost_at: float | None = None) -> None:
        self.c, self.slots, self.stop_at, self.lost_at = c, slots, stop_at, lost_at
        self.t = 0.0
        self.live: dict[str, tuple[float, Any, Job]] = {}
        self.stopped: list[str] = []
        self.started = 0
        self.starts: list[tuple[float, str]] = []
        self.warm_s = 0.0

    def clock(self) -> Clock:
        return Clock(lambda: self.t, self._sleep)

    def _sleep(self, s: float) -> None:
        self.t += s

    def region_for(self, region: str) -> str:
        return region

    def lease(self, region: str, preferred: str | None, duration_s: float, strict: bool = False) -> dict | None:
        if self.lost_at is not None and self.t >= self.lost_at:
            raise errors.TesterError("the slot broker did not answer a lease: RayActorError (the actor is gone)")
        return {"id": f"l{self.t}-{len(self.live)}"} if len(self.live) < self.slots else None

    def evidence(self, preferred: str | None) -> dict:
        return {"target_idle_slots": 3, "capacity_age_s": 1.5}   # what the broker's snapshot said

    def start(self, region: str, job: Job, lease_id: str, tag: Any) -> None:
        self.started += 1
        self.starts.append((self.t, job.session_id))
        self.live[lease_id] = (self.t + job.duration_s, tag, job)

    def poll(self, timeout: float) -> list[Finished]:
        self.t += timeout
        if self.stop_at is not None and self.t >= self.stop_at:
            self.c.stop_signal = 2
        done = [k for k, (end, _, _) in self.live.items() if end <= self.t]
        return [self._finish(k, "ok") for k in done]

    def _finish(self, lease_id: str, outcome: str) -> Finished:
        _, tag, job = self.live.pop(lease_id)
        row = SessionRow(session_id=job.session_id, outcome="ok" if outcome == "ok" else "failed",
                         error_class=None if outcome == "ok" else "stopped", duration_s=job.duration_s)
        return Finished(tag, lease_id, "local", row=row)

    def stop_all(self, grace_s: float = 10.0) -> list[Finished]:
        self.stopped = [job.session_id for _, _, job in self.live.values()]
        return [self._finish(k, "stopped") for k in list(self.live)]

    def warm(self) -> float:
        self.t += self.warm_s
        return self.warm_s

    def capacity_reads(self, every_s: float) -> list:
        return []

    def final_capacity_reads(self) -> list:
        return []

    def broker_state(self, every_s: float) -> dict | None:
        return None

    def final_state(self) -> dict:
        return {}


def campaign(concurrency: int, window_s: float, duration_s: float, max_fraction: float = 1.0):
    scenario = Scenario.model_validate({
        "name": "drv", "target": {"dialect": "reference"}, "workflow": {"pipeline": "sd"},
        "prompts": {"sets": [{"set": "bootstrap"}]},
        "load": {"shape": "stages", "stages": [{"concurrency": concurrency, "duration_s": window_s}],
                 "session": {"duration": duration_s, "min_s": 1}},
        "capacity": {"max_fraction": max_fraction, "idle_reserve": 0, "stagger_s": 0, "lease_wait_s": 5}})
    c = Campaign(scenario, CampaignOptions(progress=False))
    c.campaign_id, c.urls = "drv-1", {"local": "http://gw"}
    return c, make_plan(scenario, static_capacity(4, model="sd"), pool=POOL)


def run(c: Campaign, plan, ex: FakeExecutor) -> tuple[MemorySink, MemorySink]:
    now, stored = MemorySink(), MemorySink(stored=True)
    drive(c, ex, PlanSource(c, plan, ex, _prompt_lookup(POOL), ex.clock()), Outputs([c.tally, now, stored]))
    return now, stored


def test_a_plan_runs_every_session_into_every_output_with_its_identity():
    c, plan = campaign(concurrency=3, window_s=12, duration_s=4, max_fraction=0.5)  # cap 2 of 4: one planner skip
    assert plan.skipped, "the test needs a session the planner could not fit"
    now, stored = run(c, plan, FakeExecutor(c, slots=2))
    assert [r.session_id for r in now.rows] == [r.session_id for r in stored.rows]  # one order, every output
    skipped = [r for r in now.rows if r.error_class == "planner_skipped"]
    ran = [r for r in now.rows if r.outcome == "ok"]
    assert now.rows[:len(plan.skipped)] == skipped and len(skipped) == len(plan.skipped)  # the planner's first
    assert sorted(r.session_id for r in ran) == [f"drv-1-{s.index:05d}" for s in plan.sessions]
    by_id = {f"drv-1-{s.index:05d}": s for s in plan.sessions}
    for r in ran:  # the driver's identity on the runner's row: the plan's session, its first prompt
        s = by_id[r.session_id]
        assert (r.campaign_id, r.scenario, r.region, r.gateway, r.planned_start_s, r.prompt_id) == \
            ("drv-1", "drv", "local", "http://gw", s.start_s, s.prompts[0].prompt_id)
    assert c.tally.counts == {"ok": len(ran), "skipped_no_capacity": len(skipped)} and c.tally.done == len(ran)


def test_the_plans_clock_starts_once_every_runner_is_up():
    """Runners that take 50 s to start delay the plan by 50 s: no session falls due during the warm-up and
    then starts in a bunch with the others."""
    c, plan = campaign(concurrency=2, window_s=30, duration_s=4)
    ex = FakeExecutor(c, slots=16)   # room for every session: only the plan's clock paces them
    ex.warm_s = 50.0
    run(c, plan, ex)
    planned = {f"drv-1-{s.index:05d}": s.start_s for s in plan.sessions}
    assert len(ex.starts) == len(planned) and len(planned) >= 4
    assert all(0 <= t - 50.0 - planned[sid] <= 1.0 for t, sid in ex.starts), (ex.starts, planned)


def test_a_session_no_slot_was_leased_to_is_skipped_with_the_capacity_evidence():
    c, plan = campaign(concurrency=2, window_s=12, duration_s=10)   # the plan fits 2; the fake leases only 1
    now, stored = run(c, plan, FakeExecutor(c, slots=1))
    skipped = [r for r in stored.rows if r.error_class == "no_slot_leased"]
    assert skipped and all((r.outcome, r.target_idle_slots, r.capacity_age_s) == ("skipped_no_capacity", 3, 1.5)
                           for r in skipped)


def test_a_stop_signal_stops_the_live_sessions_and_stores_them():
    c, plan = campaign(concurrency=2, window_s=30, duration_s=10)
    ex = FakeExecutor(c, slots=2, stop_at=5.0)
    now, stored = run(c, plan, ex)
    assert len(ex.stopped) == 2 and not ex.live
    assert [r.session_id for r in stored.rows if r.error_class == "stopped"] == ex.stopped
    assert len(stored.rows) == 2  # nothing more started after the signal


def test_a_lost_broker_ends_the_run_with_everything_gathered():
    c, plan = campaign(concurrency=2, window_s=30, duration_s=4)
    ex = FakeExecutor(c, slots=2, lost_at=9.0)
    now, stored = run(c, plan, ex)
    assert c.tester_error is not None and "slot broker" in c.tester_error
    ok = [r for r in stored.rows if r.outcome == "ok"]
    assert len(ok) >= 2 and set(ex.stopped) == {r.session_id for r in stored.rows if r.error_class == "stopped"}
    assert not ex.live


def test_a_runner_that_does_not_start_ends_the_run_before_any_session_with_every_output_closed():
    """warm() fails (a region no node offers): no session starts, the error is the run's tester error (exit
    4, the summary still made), and every output is drained and closed once, in the list's order."""
    c, plan = campaign(concurrency=2, window_s=30, duration_s=4)
    ex = FakeExecutor(c, slots=2)
    order: list[str] = []

    def refuse() -> float:
        raise errors.TesterError("the runner for region 'local' did not start within 1 s")
    ex.warm = refuse  # type: ignore[method-assign]
    now, stored = MemorySink(name="now"), MemorySink(name="stored", stored=True)
    for sink in (now, stored):
        sink.close = lambda s=sink: order.append(s.name) or {"rows": len(s.rows)}  # type: ignore[method-assign]
    outputs = Outputs([c.tally, now, stored])
    drive(c, ex, PlanSource(c, plan, ex, _prompt_lookup(POOL), ex.clock()), outputs)
    assert c.tester_error is not None and "region 'local'" in c.tester_error
    assert ex.started == 0 and not now.rows and not stored.rows
    assert outputs.close() == {"now": {"rows": 0}, "stored": {"rows": 0}} and order == ["now", "stored"]
    assert outputs.close() is outputs.states and order == ["now", "stored"]   # once


def test_outputs_store_the_last_tables_after_every_row_and_close_each_even_after_one_fails():
    import pyarrow as pa

    from fleet.results.sink import SUMMARIES

    class Failing(MemorySink):
        def close(self) -> dict[str, Any]:
            raise OSError("disk gone")

    first, stored, last = Failing(name="first"), MemorySink(name="stored", stored=True), MemorySink(name="last")
    outputs = Outputs([first, stored, last], flush_s=3600)   # rows gathered until store() / close()
    outputs.add([SessionRow(session_id="a", outcome="ok"), SessionRow(session_id="b", outcome="ok")])
    assert [r.session_id for r in first.rows] == ["a", "b"] and not stored.batches   # at once vs gathered
    outputs.store({"summaries": SUMMARIES.empty_table()})
    with pytest.raises(errors.TesterError) as failed:   # the CLI's one line and exit 4, not a traceback
        outputs.close()
    assert str(failed.value) == "storing the results failed (OSError: disk gone)"
    assert failed.value.exit_code == 4 and isinstance(failed.value.__cause__, OSError)
    assert [(b.seq, [r.session_id for r in b.rows], sorted(b.tables)) for b in stored.batches] == \
        [(1, ["a", "b"], ["events", "samples", "sessions"]), (2, [], ["summaries"])]
    assert isinstance(stored.batches[1].tables["summaries"], pa.Table)
    assert stored.closed and last.closed and outputs.states == {"stored": {"rows": 2}, "last": {"rows": 2}}


@pytest.mark.parametrize("selection", ["round_robin", "random"])
def test_the_monitor_draws_its_prompts_by_the_scenarios_selection(selection):
    """Four prompts of one category: round robin gives them in file order, again and again; random (seeded)
    does not keep that order. The monitor used to cycle in file order whatever the scenario said."""
    from fleet.coverage import Coverage, Pick, Target
    from fleet.runtime.monitor import CoverageSource, MonitorOptions

    c, _ = campaign(concurrency=1, window_s=10, duration_s=4)
    c.scenario = Scenario.model_validate({**c.scenario.model_dump(), "prompts": {
        **c.scenario.prompts.model_dump(), "selection": selection}})
    c.snapshot = static_capacity(4, model="sd")
    c.scenario = Scenario.model_validate({**c.scenario.model_dump(), "monitor": {
        "every_min": 1, "daily_budget": 0.5, "session_s": 4}})
    source = CoverageSource(c, Coverage(60, 4, 0.5, ["c"]), None, POOL, "run", MonitorOptions(seed=3))
    pick = Pick(Target("https://o1"), "c")
    firsts = [source._job_for(f"s{i}", pick, "local", {}).prompts[0].prompt_id for i in range(12)]
    in_order = [f"p{i % 4}" for i in range(12)]
    assert (firsts == in_order) is (selection == "round_robin"), firsts


def test_an_error_after_the_run_keeps_its_rows_closes_every_output_once_and_stays_the_error(tmp_path, capsys):
    """The summary code fails after drive() returned (here: raises at once). The run's stack still stores
    every row gathered and closes every output once; an output that then fails to close is told in one
    line, and the run's own error is the one raised."""
    from fleet.results.sink import ParquetSink, read_sessions
    from fleet.runtime.lifecycle import open_outputs

    c, _ = campaign(concurrency=1, window_s=10, duration_s=4)
    closed: list[str] = []

    class Broken(MemorySink):
        def close(self) -> dict[str, Any]:
            closed.append(self.name)
            raise OSError("the disk is gone")

    with pytest.raises(RuntimeError, match="the summary failed"):
        with c.closing:
            outputs, sink = open_outputs(c, "drv.yaml", lambda: ParquetSink(tmp_path, c.campaign_id, {}), flush_s=3600)
            outputs.append(Broken(name="broken"))
            outputs.add([SessionRow(session_id="drv-1-00000", outcome="ok")])
            raise RuntimeError("the summary failed")
    assert read_sessions(sink.dir).column("session_id").to_pylist() == ["drv-1-00000"]
    assert closed == ["broken"] and outputs.close() is outputs.states   # once
    assert capsys.readouterr().err.splitlines() == [
        "fleet: closing the outputs failed too: storing the results failed (OSError: the disk is gone)"]
