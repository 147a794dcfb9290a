"""The API's planning answers: the graduation board (``/v1/graduation``) and the demand gaps
(``/v1/demand/gaps``); the same queries as the ``/graduation`` and ``/demand`` pages."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from fleet.dashboard import queries as q
from fleet.dashboard.answers import Out, Page, context_of, paged, sessions_url
from fleet.dashboard.api import QualifiedParams
from fleet.dashboard.params import VALUE_PATTERN, Limits, NotConfigured, Unavailable

__all__ = ["router"]

router = APIRouter(prefix="/v1")


# --------------------------------------------------------------------------- graduation


class GraduationDay(Out):
    day: dt.date
    counted_sessions: int
    sla_score: float | None
    sessions_url: str


class GraduationChange(Out):
    day: dt.date
    state: Literal["unproven", "graduated", "demoted"]
    evidence: list[dt.date] = Field(description="The judged days that made the change.")


class GraduationPair(Out):
    orchestrator: str
    gpu: str
    model: str
    state: Literal["unproven", "graduated", "demoted"]
    changes: list[GraduationChange]
    days: list[GraduationDay]


class GraduationRuleOut(Out):
    model: str
    graduate_days: int
    min_sessions: int
    min_score: float
    demote_days: int


class GraduationBoard(Out):
    model: str
    days: int
    rule: GraduationRuleOut | None
    data: list[GraduationPair]
    pagination: Page


class GraduationParams(Limits):
    model: Annotated[str, Field(pattern=VALUE_PATTERN, max_length=300, description="The workflow's model id.")]
    days: int = Field(30, ge=1, le=90, description="UTC days of the series, today included.")


@router.get("/graduation", response_model=GraduationBoard, tags=["fleet"],
            summary="Each orchestrator x GPU's graduation state for a workflow, its changes and their evidence")
def graduation(request: Request, p: Annotated[GraduationParams, Query()]) -> GraduationBoard:
    from fleet.dashboard.graduation import board
    from fleet.graduation import rule_for

    ctx = context_of(request)
    rule = rule_for(ctx.rules, p.model)
    rows = board(ctx.engine, ctx.rules, p.model, p.days, ctx.now())
    part, page = paged(rows, p)
    f = q.Filters(window="all", model=p.model, now=ctx.now())
    return GraduationBoard(
        model=p.model, days=p.days, pagination=page,
        rule=GraduationRuleOut(model=rule.model, graduate_days=rule.graduate.days, min_sessions=rule.graduate.min_sessions,
                               min_score=rule.graduate.min_score, demote_days=rule.demote.days) if rule else None,
        data=[GraduationPair(
            orchestrator=r["orchestrator"], gpu=r["gpu"], model=r["model"], state=r["state"],
            changes=[GraduationChange(**c) for c in r["changes"]],
            days=[GraduationDay(day=d["day"], counted_sessions=d["counted"], sla_score=d["score"],
                                sessions_url=sessions_url(f, orchestrator=r["orchestrator"], gpu=r["gpu"], day=d["day"],
                                                          counted="yes")) for d in r["days"]]) for r in part])


# --------------------------------------------------------------------------- demand gaps


class RegionGap(Out):
    region: str = Field(description="A region of the demand file's map; 'unknown' for orchestrators it places nowhere.")
    demand_streams: float = Field(description="Streams the workflow wants at once in the region.")
    unmet_requests: int | None = Field(description="NaaP's no-orchestrator sessions over the window (NaaP only).")
    peak_hour: str | None = Field(description="The hour NaaP's demand peaked (NaaP only).")
    slots: int
    qualified_slots: int
    qualified_by_gpu: dict[str, int]
    failing_slots: int
    unproven_slots: int
    gap: float = Field(description="Demand the qualified slots cannot serve (streams, at least 0).")
    surplus: float = Field(description="Qualified slots beyond the demand (at least 0).")


class RegionGPUSlots(Out):
    region: str
    gpu: str
    qualified_slots: int
    failing_slots: int
    unproven_slots: int
    slots: int


class DemandGaps(Out):
    model: str
    window: str
    by_gpu: list[RegionGPUSlots] = Field(description="Each region's slots by GPU model and status.")
    source: Literal["file", "naap", "none"] = Field(description="Where the demand came from.")
    data: list[RegionGap]
    pagination: Page


class DemandParams(QualifiedParams):
    pass


@router.get("/demand/gaps", response_model=DemandGaps, tags=["fleet"],
            summary="Per region: a workflow's demand against its SLA-qualified capacity")
def demand_gaps(request: Request, p: Annotated[DemandParams, Query()]) -> DemandGaps:
    from fleet.dashboard.demand import demand_gaps as gaps

    ctx = context_of(request)
    if ctx.demand is None:
        raise NotConfigured("no demand declared: start the dashboard with --demand FILE (fleet schema demand)")
    f = p.filters(context_of(request).now())
    naap, failed = ctx.naap(f)
    if failed:
        raise Unavailable(failed)
    got = gaps(ctx.engine, f, ctx.demand, naap, sla=p.sla, min_sessions=p.min_sessions)
    part, page = paged(got["regions"], p)
    return DemandGaps(model=p.model, window=p.window, source=got["demand_source"], pagination=page,
                      by_gpu=[RegionGPUSlots(**{k: g[k] for k in RegionGPUSlots.model_fields}) for g in got["by_gpu"]],
                      data=[RegionGap(**{k: r[k] for k in RegionGap.model_fields}) for r in part])



