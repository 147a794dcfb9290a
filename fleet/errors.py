"""The fleet's exception tree.

    FleetError                      anything the CLI turns into a one-line message
    ├── InputError                  a user's file is wrong (exit code 1)
    │   ├── ScenarioError           scenario YAML: one Problem per mistake
    │   └── PromptSetError          prompt-set YAML: one Problem per mistake
    ├── UsageError                  the command line itself is wrong (exit code 2)
    ├── CapacityError               a capacity snapshot cannot be read or parsed
    ├── ClickHouseError             ClickHouse refused or could not be reached (names the variable, never a secret)
    ├── ResultsError                the stored results cannot be read (a corrupt or foreign Parquet file)
    ├── GatewayStartError           the local reference gateway did not start
    ├── TesterError                 the tester's machinery failed: Ray, the slot broker, a region's runners (exit 4)
    └── ProbeFailure                why one session failed (its phase and error class): caught by the probe
                                    and turned into the session's outcome, never shown as an error

Gateway faults are *not* exceptions: a probe returns them as an outcome
(see the developers' guide). Exceptions here are for the user's input and for
our own boundaries; third-party exceptions are translated with ``raise ... from``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NewType, get_args

__all__ = [
    "ERROR_CLASSES",
    "AnyErrorClass",
    "CapacityError",
    "ClickHouseError",
    "ErrorClass",
    "FleetError",
    "GatewayStartError",
    "InputError",
    "Problem",
    "ProbeFailure",
    "PromptSetError",
    "ResultsError",
    "ScenarioError",
    "StatusError",
    "TesterError",
    "UsageError",
    "is_error_class",
    "status_error",
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


class TesterError(FleetError):
    """The tester's own machinery failed (Ray, the slot broker, a region's runners): the run measured
    nothing more of the network. ``fleet run`` and ``fleet monitor`` end with what was stored and exit 4."""

    exit_code = 4


class CapacityError(FleetError):
    """A capacity snapshot could not be read."""


class ClickHouseError(FleetError):
    """ClickHouse refused a statement or could not be reached."""


class ResultsError(FleetError):
    """The stored results cannot be read (a Parquet file that is corrupt or not the fleet's)."""


class GatewayStartError(FleetError):
    """The local reference gateway process did not start."""


# how a session ends, and where it failed: closed sets (the results schema documents them, docs/METRICS.md)
Outcome = Literal["ok", "degraded", "failed", "skipped_no_capacity"]
Phase = Literal["signaling", "ice", "dtls", "media", "pipeline", "capacity", "timeout", "tester"]
# why it failed, as a short stable name: a closed set (mypy holds every producer to it), plus one
# family per HTTP status, made only by status_error()
ErrorClass = Literal[
    # signaling
    "http_transport", "timeout", "bad_json", "bad_answer", "no_playback_url", "whep_transport", "bad_whep_answer",
    # connection and output
    "ice_timeout", "ice_failed", "dtls_timeout", "connection_lost", "disconnected", "no_output", "output_stalled",
    "session_cap", "startup_deadline",
    # the gateway's own error (gateway_status.error, inference_status.last_error)
    "no_orchestrators_available", "codec_refused", "missing_video", "gateway_ice_failed", "whip_disconnected",
    "gateway_error",
    # the fleet's side: capacity it would not take, and the tester's own failures
    "no_slot_leased", "planner_skipped", "stopped", "cancelled", "runner_died", "ray_error", "no_result",
    "tester_exception", "auth_refused",
]
ERROR_CLASSES: frozenset[str] = frozenset(get_args(ErrorClass))
StatusError = NewType("StatusError", str)  # http_404, whep_http_503, stop_http_500, ...
StatusFamily = Literal["http", "whep_http", "stop_http"]
AnyErrorClass = ErrorClass | StatusError
_STATUS = re.compile(r"(http|whep_http|stop_http)_[1-5]\d\d")


def status_error(family: StatusFamily, status: int) -> StatusError:
    """The error class of an HTTP answer with this status, e.g. ``whep_http_404``."""
    return StatusError(f"{family}_{status}")


def is_error_class(name: str) -> bool:
    """Whether ``name`` is one of the error classes above (docs/METRICS.md lists them)."""
    return name in ERROR_CLASSES or _STATUS.fullmatch(name) is not None


class ProbeFailure(FleetError):
    """Why a session failed: the phase it happened in and a short error class (no secrets).

    ``skipped``: not a failure at all (no capacity); ``excused``: a failure NaaP does not count
    against the orchestrator.
    """

    def __init__(self, phase: Phase, error: AnyErrorClass, detail: str = "", skipped: bool = False,
                 excused: bool = False) -> None:
        super().__init__(f"{phase}: {error}" + (f" ({detail})" if detail else ""))
        self.phase, self.error, self.detail, self.skipped, self.excused = phase, error, detail, skipped, excused
