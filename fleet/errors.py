"""The fleet's exception tree.

    FleetError                      anything the CLI turns into a one-line message
    ├── InputError                  a user's file is wrong (exit code 1)
    │   ├── ScenarioError           scenario YAML: one Problem per mistake
    │   └── PromptSetError          prompt-set YAML: one Problem per mistake
    ├── UsageError                  the command line itself is wrong (exit code 2)
    ├── CapacityError               a capacity snapshot cannot be read or parsed
    ├── ClickHouseError             ClickHouse refused or could not be reached (names the variable, never a secret)
    ├── GatewayStartError           the local reference gateway did not start
    └── ProbeFailure                why one session failed (its phase and error class): caught by the probe
                                    and turned into the session's outcome, never shown as an error

Gateway faults are *not* exceptions: a probe returns them as an outcome
(see the developers' guide). Exceptions here are for the user's input and for
our own boundaries; third-party exceptions are translated with ``raise ... from``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CapacityError",
    "ClickHouseError",
    "FleetError",
    "GatewayStartError",
    "InputError",
    "Problem",
    "ProbeFailure",
    "PromptSetError",
    "ScenarioError",
    "UsageError",
]


@dataclass(frozen=True, order=True)
class Problem:
    """One mistake in a user's file, located as precisely as we can."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FleetError(Exception):
    """Base of every error the fleet raises on purpose."""

    exit_code = 1


class InputError(FleetError):
    """A user's file has one or more problems; each renders as one line."""

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):  # one message that already names the file and field
            self.problems: list[Problem] = []
            super().__init__(problems)
            return
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ScenarioError(InputError):
    """A scenario file is invalid."""


class PromptSetError(InputError):
    """A prompt-set file is invalid."""


class UsageError(FleetError):
    """The command line is wrong."""

    exit_code = 2


class CapacityError(FleetError):
    """A capacity snapshot could not be read."""


class ClickHouseError(FleetError):
    """ClickHouse refused a statement or could not be reached."""


class GatewayStartError(FleetError):
    """The local reference gateway process did not start."""


# how a session ends, and where it failed: closed sets (the results schema documents them, docs/METRICS.md)
Outcome = Literal["ok", "degraded", "failed", "skipped_no_capacity"]
Phase = Literal["signaling", "ice", "dtls", "media", "pipeline", "capacity", "timeout", "tester"]


class ProbeFailure(FleetError):
    """Why a session failed: the phase it happened in and a short error class (no secrets).

    ``skipped``: not a failure at all (no capacity); ``excused``: a failure NaaP does not count
    against the orchestrator.
    """

    def __init__(self, phase: Phase, error: str, detail: str = "", skipped: bool = False,
                 excused: bool = False) -> None:
        super().__init__(f"{phase}: {error}" + (f" ({detail})" if detail else ""))
        self.phase, self.error, self.detail, self.skipped, self.excused = phase, error, detail, skipped, excused
