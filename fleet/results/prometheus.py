"""Prometheus exposition of a campaign's results, from the driver (the Ray head in a cluster run).

Series (label sets are bounded by the network: orchestrator, model, region, outcome; never a
session id):

- ``fleet_sessions_total{orchestrator, model, region, outcome}``: finished sessions;
  ``outcome="skipped_no_capacity"`` counts the sessions skipped for capacity (their orchestrator is
  the one they were meant for, or ``""``);
- ``fleet_sessions_excused_total{...}``: failures NaaP does not hold against the orchestrator;
- ``fleet_startup_seconds``, ``fleet_g2g_latency_ms`` (each session's median) and
  ``fleet_output_fps`` histograms, per orchestrator, model and region, over the sessions that ran;
- ``fleet_refused_while_idle_total{orchestrator, model}`` and
  ``fleet_refused_while_idle_last_seen_timestamp_seconds{orchestrator, model}``: sessions the gateway
  skipped ("no orchestrators available") while a fresh snapshot showed their target idle slots (a broken
  orchestrator looks full to one session; ``fleet.results.refusals``), outside the SLA score;
- ``fleet_leases_held`` and ``fleet_lease_budget``: the broker's slots in use against its budget;
- ``fleet_orchestrator_last_tested_timestamp_seconds{orchestrator, model}``: when a session on the
  orchestrator last finished (coverage age = ``time() - that``);
- the monitor's coverage (``fleet monitor``): ``fleet_coverage_age_seconds{orchestrator, model}``
  (since its last test started; an orchestrator never tested is absent),
  ``fleet_coverage_targets{model}`` and ``fleet_coverage_overdue{model}``, and its daily budget as
  ``fleet_budget_slot_seconds{model, kind="daily"|"used"}``.

``outputs.prometheus: {host, port}`` starts the endpoint; ``linger_s`` keeps it up that long after
the campaign so a scraper reads the final counts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fleet.results.row import SessionRow
from fleet.results.sink import Batch

__all__ = ["CampaignMetrics"]

LABELS = ("orchestrator", "model", "region")
STARTUP_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)
LATENCY_BUCKETS = (25, 50, 100, 150, 200, 300, 500, 800, 1200, 2000, 3000, 5000)
FPS_BUCKETS = (5, 10, 12, 15, 20, 24, 27, 30, 45, 60)


def _orchestrator(row: SessionRow) -> str:
    return str(row.orchestrator_address or row.orchestrator_url or "")


class CampaignMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Counter("fleet_sessions", "finished test sessions by outcome", (*LABELS, "outcome"),
                                registry=r)
        self.excused = Counter("fleet_sessions_excused", "failures NaaP does not hold against the orchestrator",
                               LABELS, registry=r)
        self.startup = Histogram("fleet_startup_seconds", "stream request to the first output frame", LABELS,
                                 buckets=STARTUP_BUCKETS, registry=r)
        self.latency = Histogram("fleet_g2g_latency_ms", "each session's median client glass-to-glass latency",
                                 LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.fps = Histogram("fleet_output_fps", "each session's output fps", LABELS, buckets=FPS_BUCKETS,
                             registry=r)
        self.refused = Counter("fleet_refused_while_idle", "sessions refused while the target advertised idle slots",
                               ("orchestrator", "model"), registry=r)
        self.aimed = Counter("fleet_sessions_aimed", "sessions sent to a target orchestrator (the refusal share's "
                             "denominator: fleet_refused_while_idle_total / fleet_sessions_aimed_total)",
                             ("orchestrator", "model"), registry=r)
        self.refused_last = Gauge("fleet_refused_while_idle_last_seen_timestamp_seconds",
                                  "when a session was last refused while its target advertised idle slots",
                                  ("orchestrator", "model"), registry=r)
        self.leases = Gauge("fleet_leases_held", "slots the campaign holds now", registry=r)
        self.budget = Gauge("fleet_lease_budget", "slots the campaign may hold now (its capacity budget)",
                            registry=r)
        self.last_tested = Gauge("fleet_orchestrator_last_tested_timestamp_seconds",
                                 "when a session on the orchestrator last finished", ("orchestrator", "model"),
                                 registry=r)
        self.coverage_age = Gauge("fleet_coverage_age_seconds", "since the orchestrator's last test started",
                                  ("orchestrator", "model"), registry=r)
        self.coverage_targets = Gauge("fleet_coverage_targets", "orchestrators the monitor covers", ("model",),
                                      registry=r)
        self.coverage_overdue = Gauge("fleet_coverage_overdue", "orchestrators past their period", ("model",),
                                      registry=r)
        self.budget_s = Gauge("fleet_budget_slot_seconds", "the monitor's daily budget and what it used today",
                              ("model", "kind"), registry=r)
        self._server: Any = None

    def serve(self, host: str, port: int) -> int:
        """Start the exposition endpoint; returns the port (0 picks a free one)."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    name = "prometheus"
    stored = False   # an output of fleet.results.outputs, fed at once

    def add(self, batch: Batch) -> None:
        for row in batch.rows:
            labels = {"orchestrator": _orchestrator(row), "model": row.model or "", "region": row.region or ""}
            self.sessions.labels(**labels, outcome=row.outcome).inc()
            target = {"orchestrator": row.target_orchestrator or "", "model": labels["model"]}
            if row.target_orchestrator and row.error_class not in ("no_slot_leased", "planner_skipped"):
                self.aimed.labels(**target).inc()   # as fleet.results.refusals counts them: sent to it
            if row.refused_while_idle and row.target_orchestrator:
                self.refused.labels(**target).inc()
                self.refused_last.labels(**target).set(row.started_unix or time.time())
            if row.outcome == "skipped_no_capacity":
                continue
            if row.excused and row.outcome == "failed":
                self.excused.labels(**labels).inc()
            for metric, value in ((self.startup, row.startup_s), (self.latency, row.g2g_latency_ms),
                                  (self.fps, row.output_fps)):
                if value is not None:
                    metric.labels(**labels).observe(float(value))
            if labels["orchestrator"]:
                self.last_tested.labels(orchestrator=labels["orchestrator"], model=labels["model"]).set(time.time())

    def broker(self, state: Mapping[str, Any]) -> None:
        if "leases" in state:
            self.leases.set(state["leases"])
        if "budget" in state:
            self.budget.set(state["budget"])

    def coverage(self, status: Mapping[str, Any], model: str) -> None:
        """The monitor's coverage (fleet.coverage.Coverage.status)."""
        self.coverage_age.clear()  # orchestrators that left the network leave the series too
        for orchestrator, age in status["ages_s"].items():
            if age is not None:
                self.coverage_age.labels(orchestrator=orchestrator, model=model).set(age)
        self.coverage_targets.labels(model=model).set(status["targets"])
        self.coverage_overdue.labels(model=model).set(len(status["overdue"]))
        self.budget_s.labels(model=model, kind="daily").set(status["budget_s"])
        self.budget_s.labels(model=model, kind="used").set(status["used_s"])

    def close(self) -> None:
        """No more sessions. The endpoint still serves the last figures until ``stop`` (the run's teardown,
        after ``linger_s``), so a last scrape sees them."""
        return None

    def stop(self, linger_s: float = 0.0) -> None:
        """Stop the endpoint, after keeping it up ``linger_s`` (a wait for a scrape, not synchronisation)."""
        if self._server is not None and linger_s:
            time.sleep(linger_s)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
