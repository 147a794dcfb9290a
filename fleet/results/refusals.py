"""Orchestrators that refuse while advertising idle capacity, per orchestrator, outside the SLA score.

go-livepeer tries past an orchestrator that refuses the job, errs or times out, and ends with "no
orchestrators available" (``server/ai_process.go`` ``processAIRequest``): one session aimed at it is an
excused skip, indistinguishable from a full orchestrator. Over many sessions the evidence each row
carries (``refused_while_idle``: the gateway's "no orchestrators available" while a fresh snapshot showed
the target idle slots, ``fleet.runtime.job.capacity_evidence``) tells them apart. The summary, the
dashboard and Prometheus show it; the SLA score, which follows NaaP, does not use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Refusals", "refusals"]


@dataclass(frozen=True)
class Refusals:
    orchestrator: str     # the target: its service URI, else its address
    refused: int          # sessions refused while it advertised idle slots
    aimed: int            # sessions aimed at it that the gateway took or refused (not the broker's own skips)
    last_unix: float      # when the last refusal started

    @property
    def share(self) -> float:
        return self.refused / self.aimed if self.aimed else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"orchestrator": self.orchestrator, "refused": self.refused, "aimed": self.aimed,
                "share": round(self.share, 4), "last_unix": self.last_unix}


def refusals(rows: Iterable[Mapping[str, Any]]) -> list[Refusals]:
    """Per target orchestrator with at least one refusal, most refusals first."""
    aimed: dict[str, int] = {}
    refused: dict[str, int] = {}
    last: dict[str, float] = {}
    for r in rows:
        target = r.get("target_orchestrator")
        if not target or r.get("error_class") in ("no_slot_leased", "planner_skipped"):
            continue   # aimed nowhere, or never sent: the fleet's own caps held it back
        aimed[target] = aimed.get(target, 0) + 1
        if r.get("refused_while_idle"):
            refused[target] = refused.get(target, 0) + 1
            at = r.get("started_at")   # a stored row's time (a datetime), as the sessions table holds it
            started = at.timestamp() if at is not None else 0.0
            last[target] = max(last.get(target, started), started)
    found = [Refusals(t, n, aimed[t], last[t]) for t, n in refused.items()]
    return sorted(found, key=lambda x: (-x.refused, x.orchestrator))
