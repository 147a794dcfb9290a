"""What a dashboard request may ask: the query-parameter models every page and API call is checked against.

FastAPI validates each query against these pydantic models before any query runs, and writes the OpenAPI
document from them. A value must be letters, digits, spaces and a few marks (``VALUE_PATTERN``), at most
300 characters; the filter form's empty value means "all". ``no_repeats`` refuses a repeated parameter
(pydantic would keep the last one), and ``said`` turns a pydantic error into the one line a 400 carries.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from fleet.dashboard import queries as q

__all__ = ["DEFAULT_LIMIT", "VALUE_PATTERN", "BadRequest", "GraduationQuery", "LeaderboardQuery", "Limits", "OrchestratorQuery",
           "NotConfigured", "SessionsQuery", "Text", "Unavailable", "ViewQuery", "allowed", "no_repeats", "said"]

VALUE_PATTERN = r"^[\w .:/@+,()#=?\[\]%~!*-]+$"   # no quotes, angle brackets, braces, backslash or controls
VALUE_SAID = "letters, digits, spaces and . : / @ + , ( ) # = ? [ ] % ~ ! * - only, at most 300 characters"
MAX_FIELDS = 20
DEFAULT_LIMIT = 100   # rows per page when a list is asked for without a limit
FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(2998, 12, 31)   # days the fleet can have stored


class BadRequest(Exception):
    """A request the API refuses, in one line."""


class NotConfigured(Exception):
    """The answer needs a file the dashboard was not started with (--demand): a 404, in one line."""


class Unavailable(Exception):
    """A source the answer needs (NaaP) failed: a 502, in one line."""


def _blank_is_none(v: Any) -> Any:
    return None if v == "" else v   # the filter form sends an empty value for "all"


def _utc_day(v: Any) -> Any:
    """A day as YYYY-MM-DD only (pydantic's date would also take a number of seconds)."""
    if v in ("", None):
        return None
    if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        raise ValueError("not a UTC day (YYYY-MM-DD)")
    day = dt.date.fromisoformat(v)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"a day from {FIRST_DAY} to {LAST_DAY}")
    return day


Value = Annotated[str, StringConstraints(pattern=VALUE_PATTERN, max_length=300)]
Text = Annotated[Value | None, BeforeValidator(_blank_is_none)]
Yes = Annotated[Literal["yes"] | None, BeforeValidator(_blank_is_none)]


class ViewQuery(BaseModel):
    """The filters every view takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    window: Literal["1h", "24h", "7d", "30d", "all"] = Field("7d", description="The window ending now.")
    model: Text = Field(None, description="A workflow's model id.")
    region: Text = Field(None, description="The tester's region.")
    category: Text = Field(None, description="A prompt category.")

    def filters(self, now: dt.datetime | None = None) -> q.Filters:
        return q.Filters(window=self.window, model=self.model, region=self.region, category=self.category, now=now)


class LeaderboardQuery(ViewQuery):
    by: Annotated[Literal["gpu"] | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="gpu: rank orchestrator x GPU pairs")


class OrchestratorQuery(ViewQuery):
    id: Annotated[str, Field(pattern=VALUE_PATTERN, max_length=300, description="An orchestrator, as the "
                             "leaderboard keys it (its URL when known).")]


class SessionsQuery(ViewQuery):
    orchestrator: Text = Field(None, description="The orchestrator that served it (the leaderboard's key).")
    target: Text = Field(None, description="The orchestrator it was aimed at (coverage's key).")
    gpu: Text = Field(None, description="The GPU model's name.")
    day: Annotated[dt.date | None, BeforeValidator(_utc_day)] = Field(None, description="A UTC day, YYYY-MM-DD.")
    outcome: Annotated[Literal["ok", "degraded", "failed", "skipped_no_capacity"] | None,
                       BeforeValidator(_blank_is_none)] = None
    counted: Yes = Field(None, description="yes: only the sessions the SLA counts.")
    ran: Yes = Field(None, description="yes: only the sessions that ran (not skipped for capacity).")
    refused: Yes = Field(None, description="yes: only the sessions refused while their orchestrator was idle.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=1000, description="Sessions per page.")
    offset: int = Field(0, ge=0, le=1_000_000, description="Sessions to skip (newest first).")

    def which(self) -> dict[str, str]:
        return {k: str(v) for k in ("orchestrator", "target", "gpu", "day", "outcome", "counted", "ran", "refused")
                if (v := getattr(self, k)) is not None}


class GraduationQuery(ViewQuery):
    window: Literal["all"] = Field("all", description="Graduation reads its own days; only 'all'.")
    days: int = Field(30, ge=1, le=90, description="UTC days of the series, today included.")



class Limits(BaseModel):
    """A list's page: every list the API answers takes these."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=1000, description="Rows per page.")
    offset: int = Field(0, ge=0, le=1_000_000, description="Rows to skip.")


def no_repeats(request: Request) -> None:
    """Each parameter once, and not too many (pydantic would silently keep the last of a repeated one)."""
    items = request.query_params.multi_items()
    if len(items) > MAX_FIELDS:
        raise BadRequest(f"{len(items)} query parameters (at most {MAX_FIELDS})")
    seen: set[str] = set()
    for key, _ in items:
        if key in seen:
            raise BadRequest(f"query parameter {key[:40]!r} given more than once (give it once)")
        seen.add(key)


def said(error: dict[str, Any], allowed: list[str]) -> str:
    """One pydantic error as one line."""
    loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path")]
    name = (loc[-1] if loc else "?")[:40]
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown query parameter {name!r} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return f"query parameter {name!r} is required"
    if kind in ("string_pattern_mismatch", "string_too_long"):
        return f"query parameter {name!r}: not an allowed value ({VALUE_SAID})"
    if kind == "literal_error":
        ctx = error.get("ctx") or {}
        return f"query parameter {name!r}: {str(error.get('input'))[:20]!r} is not one of {ctx.get('expected', '?')}"
    msg = str(error.get("msg", "not allowed")).removeprefix("Value error, ")
    return f"query parameter {name!r}: {msg[:200]}"


def allowed(request: Request) -> list[str]:
    route = request.scope.get("route")
    names: list[str] = []
    for p in getattr(getattr(route, "dependant", None), "query_params", ()):
        model = getattr(p.field_info, "annotation", None)
        names += list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else [p.alias]
    return sorted(names)


