"""One session's job: what the driver hands a runner, across Ray.

Frozen and typed (a misspelt field fails at once, not in a runner on another
machine), and free of secrets: the runner reads the gateway token from its own
node's environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fleet.probe.types import PromptChange

__all__ = ["Job"]


@dataclass(frozen=True)
class Job:
    session_id: str
    gateway_url: str
    duration_s: float
    prompts: tuple[PromptChange, ...]    # the first at 0 s, then each switch
    orchestrator: str | None = None      # the leased orchestrator's address (None: unknown or the gateway's pick)
    orchestrator_uri: str | None = None  # ... and its service URI, which the gateway matches
    lease_id: str | None = None          # the slot broker's lease, which the runner tells how to stop the stream

    @property
    def target(self) -> str | None:
        """The orchestrator the session asks for, as the gateway knows it."""
        return self.orchestrator_uri or self.orchestrator

    def leased(self, lease: Mapping[str, Any]) -> Job:
        """This job on the broker's lease (``id``, ``orchestrator``, ``orchestrator_uri``)."""
        return replace(self, orchestrator=lease.get("orchestrator"), orchestrator_uri=lease.get("orchestrator_uri"),
                       lease_id=lease.get("id"))
