"""The results contract: what a probe session returns (``ProbeResult``) against what is stored (the Arrow
schemas in fleet.results.sink). A field renamed or dropped on either side fails here, instead of a
column silently going empty."""

from __future__ import annotations

from dataclasses import fields
from typing import get_args

from fleet.probe.types import OUTCOMES, PHASES, Outcome, Phase, ProbeResult
from fleet.results.sink import SAMPLES, SESSIONS

PER_SECOND = {"t_s", "fps_out", "fps_in", "latency_ms_p50"}
IDENTITY = set(SAMPLES.names) - PER_SECOND           # every table's identity columns
STORED_ELSEWHERE = {
    "started_unix": "sessions.started_at",
    "latency_samples": "sessions.latency_sample_count and the summaries' sketches (the runner sends those, not "
                       "the list); per second in samples.latency_ms_p50",
    "per_second": "the samples table",
    "events": "the events table",
    "status_samples": "the events table (status_change, orchestrator_swap); kept out of the driver",
    "timeline": "dropped by the runner: only tests ask for it (keep_timeline)",
    "timeline_suspect": "dropped by the runner, with timeline",
}
ADDED_AFTER_THE_PROBE = {  # by the region runner or the driver
    "tester_cpu_pct", "tester_bottleneck", "tester_host", "target_orchestrator", "planned_start_s",
    "started_at", "latency_sample_count", "target_idle_slots", "capacity_age_s", "refused_while_idle",
}


def test_every_result_field_is_stored_and_every_column_has_a_source():
    result = {f.name for f in fields(ProbeResult)}
    columns = set(SESSIONS.names)
    assert result - columns - STORED_ELSEWHERE.keys() == set()
    assert not STORED_ELSEWHERE.keys() & columns and STORED_ELSEWHERE.keys() <= result
    assert columns - result - IDENTITY - ADDED_AFTER_THE_PROBE == set()
    assert not ADDED_AFTER_THE_PROBE & result


def test_outcomes_and_phases_are_closed_sets_the_code_and_the_docs_share():
    assert OUTCOMES == get_args(Outcome) == ("ok", "degraded", "failed", "skipped_no_capacity")
    assert PHASES == get_args(Phase)
    assert set(PHASES) == {"signaling", "ice", "dtls", "media", "pipeline", "capacity", "timeout", "tester"}


def test_a_job_is_frozen_typed_and_crosses_ray_whole():
    """The driver's hand-over to a runner: a misspelt or reassigned field fails at once, and what a runner
    gets (through Ray's pickling) equals what the driver sent."""
    import pickle
    from dataclasses import FrozenInstanceError

    import pytest

    from fleet.probe.types import PromptChange
    from fleet.runtime.job import Job

    job = Job("c-00001", "http://gw:8935", 30.0, (PromptChange(0.0, {"prompt": "a cat"}, "p1", "animals"),))
    leased = job.leased({"id": "L1", "orchestrator": None, "orchestrator_uri": "https://o1:8935"})
    assert (leased.lease_id, leased.target, job.lease_id) == ("L1", "https://o1:8935", None)
    with pytest.raises(FrozenInstanceError):
        leased.duration_s = 60.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Job("c", "http://gw", 30.0, (), orchestrater="x")  # type: ignore[call-arg]
    assert pickle.loads(pickle.dumps(leased)) == leased


def test_error_classes_are_a_closed_set_every_producer_and_the_docs_keep():
    """mypy holds every producer (ProbeFailure, GatewayVerdict, the peers, Finished, and the one row type,
    whose error_class is typed) to fleet.errors.ErrorClass; no row is a dict any more that could escape it;
    docs/METRICS.md names every class."""
    import re
    import typing
    from pathlib import Path

    from fleet.errors import ERROR_CLASSES, AnyErrorClass, is_error_class
    from fleet.results.row import SessionRow

    package = Path(__file__).resolve().parent.parent / "fleet"
    assert typing.get_type_hints(SessionRow)["error_class"] == AnyErrorClass | None
    assert is_error_class("whep_http_404") and not is_error_class("http_99") and not is_error_class("ValueError")
    docs = (package.parent / "docs" / "METRICS.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if line.startswith("| `error_class` |"))
    documented = set(re.findall(r"`([a-z_]+)`", row)) - {"error_class", "error_detail"}
    assert documented == ERROR_CLASSES, sorted(documented ^ ERROR_CLASSES)
    assert all(f"`{family}_NNN`" in row for family in ("http", "whep_http", "stop_http"))
