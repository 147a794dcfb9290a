"""One session's job: what the driver hands a runner, across Ray.

Frozen and typed (a misspelt field fails at once, not in a runner on another
machine), and free of secrets: the runner reads the gateway token from its own
node's environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fleet.plan import PromptStep
from fleet.probe.types import PromptChange
from fleet.prompts import Prompt, render_params
from fleet.results.row import SessionRow
from fleet.scenario import Scenario

__all__ = ["Job", "STALE_REFRESHES", "capacity_evidence", "prompt_changes"]

STALE_REFRESHES = 2   # a snapshot older than this many of its source's refresh intervals is stale


@dataclass(frozen=True)
class Job:
    session_id: str
    gateway_url: str
    duration_s: float
    prompts: tuple[PromptChange, ...]    # the first at 0 s, then each switch
    orchestrator: str | None = None      # the leased orchestrator's address (None: unknown or the gateway's pick)
    orchestrator_uri: str | None = None  # ... and its service URI, which the gateway matches
    lease_id: str | None = None          # the slot broker's lease, which the runner tells how to stop the stream
    target_idle: int | None = None       # the target's idle slots in the snapshot the lease was granted on
    capacity_age_s: float | None = None  # ... and that snapshot's age then (the evidence of a capacity skip)

    @property
    def target(self) -> str | None:
        """The orchestrator the session asks for, as the gateway knows it."""
        return self.orchestrator_uri or self.orchestrator

    def leased(self, lease: Mapping[str, Any]) -> Job:
        """This job on the broker's lease (``id``, ``orchestrator``, ``orchestrator_uri``, ``idle``,
        ``capacity_age_s``)."""
        return replace(self, orchestrator=lease.get("orchestrator"), orchestrator_uri=lease.get("orchestrator_uri"),
                       lease_id=lease.get("id"), target_idle=lease.get("idle"),
                       capacity_age_s=lease.get("capacity_age_s"))


def prompt_changes(scenario: Scenario, steps: Iterable[PromptStep], prompts: Mapping[tuple[str, str], Prompt],
                   seed: int) -> tuple[PromptChange, ...]:
    """A session's prompt schedule (``fleet.plan.prompt_schedule``) as the probe sends it: each prompt's
    parameters rendered into the workflow's (``prompts``: every pool prompt by set and id)."""
    return tuple(PromptChange(p.at_s, render_params(scenario.workflow.params, prompts[(p.set, p.prompt_id)], seed),
                              p.prompt_id, p.category) for p in steps)


def capacity_evidence(row: SessionRow, job: Job, refresh_s: float | None) -> dict[str, Any]:
    """What a session's row says about the capacity it was sent on: the target's idle slots in the
    broker's snapshot and that snapshot's age at the lease, and ``refused_while_idle``: the gateway said
    "no orchestrators available" for a session aimed at one orchestrator while a fresh snapshot (read within
    ``STALE_REFRESHES`` refreshes of the source, ``refresh_s``) showed it idle slots. go-livepeer tries past
    an orchestrator that refuses, errs or times out and then says just that (``server/ai_process.go``), so
    one such session cannot tell a broken orchestrator from a full one; counted over sessions it can.
    Never on a stale snapshot, nor without one (a static count names no orchestrator)."""
    age = job.capacity_age_s
    fresh = age is not None and refresh_s is not None and age <= STALE_REFRESHES * refresh_s
    refused = (row.outcome == "skipped_no_capacity" and row.error_class == "no_orchestrators_available"
               and job.target is not None and (job.target_idle or 0) > 0)
    return {"target_idle_slots": job.target_idle, "capacity_age_s": age, "refused_while_idle": refused and fresh}
