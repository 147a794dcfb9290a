"""The dashboard's JSON API (``/v1/...``): the pages' queries as typed, documented, bounded JSON.

Each endpoint's query parameters and response are pydantic models, so FastAPI checks every request
against them and writes the OpenAPI document (``/openapi.json``) from them; the tests check every answer
against that document. Field names are stable and carry their units (``_ms``, ``_s``, ``_slots``; rates in
[0, 1], scores in [0, 100]); every list takes a ``limit`` (at most 1000) and an ``offset``, and says
whether more follow. Every count of sessions comes with ``sessions_url``: the ``/v1/sessions`` query that
lists them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from fleet.dashboard import queries as q
from fleet.dashboard.answers import Meta, Out, Page, context_of, meta, paged, sessions_url, unix
from fleet.dashboard.params import (
    VALUE_PATTERN,
    LeaderboardQuery,
    Limits,
    SessionsQuery,
    ViewQuery,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1")


# --------------------------------------------------------------------------- leaderboard


class LeaderboardRow(Out):
    rank: int
    orchestrator: str = Field(description="The orchestrator's URL (its address when no URL is known).")
    gpu: str | None = Field(description="The GPU model (by=gpu only).")
    sla_score: float | None = Field(description="The network's SLA score, 0-100.")
    coverage: float | None
    reliability: float | None
    quality: float | None
    startup_success: float | None
    no_swap_rate: float | None
    output_viability: float | None
    ptff_score: float | None
    e2e_score: float | None
    fps_score: float | None
    failure_rate: float | None
    excused_rate: float | None
    g2g_latency_p50_ms: float | None
    g2g_latency_p90_ms: float | None
    output_fps_p10: float | None
    output_fps_p50: float | None
    startup_p50_s: float | None
    sessions: int
    counted_sessions: int
    skipped_sessions: int
    last_tested: dt.datetime | None
    sessions_url: str


class Benchmark(Out):
    metric: str
    good: float
    bad: float


class LeaderboardPage(Out):
    data: list[LeaderboardRow]
    benchmark: list[Benchmark] = Field(description="The network's anchors each component is scored against.")
    pagination: Page
    meta: Meta


class LeaderboardParams(LeaderboardQuery, Limits):
    pass



@router.get("/leaderboard", response_model=LeaderboardPage, tags=["fleet"],
            summary="Orchestrators (or orchestrator x GPU) ranked by the network's SLA score")
def leaderboard(request: Request, p: Annotated[LeaderboardParams, Query()]) -> LeaderboardPage:
    f = p.filters(context_of(request).now())
    rows, bench = q.leaderboard(context_of(request).engine, f, by_gpu=p.by == "gpu")
    part, page = paged(rows, p)
    data = []
    for i, r in enumerate(part, p.offset + 1):
        ran = r["rows_"] - r["skipped"] - r["tester"]
        gpu = r["gpu"] if p.by == "gpu" else None
        data.append(LeaderboardRow(
            rank=i, orchestrator=r["orchestrator"], gpu=gpu, sla_score=r["score"], coverage=r["coverage"],
            reliability=r["reliability"], quality=r["quality"], startup_success=r.get("startup_success"),
            no_swap_rate=r.get("no_swap_rate"), output_viability=r.get("output_viability"), ptff_score=r["ptff"],
            e2e_score=r["e2e"], fps_score=r["fps"], failure_rate=r["failed"] / ran if ran else None,
            excused_rate=r["excused_n"] / ran if ran else None, g2g_latency_p50_ms=r["g2g_p50"],
            g2g_latency_p90_ms=r["g2g_p90"], output_fps_p10=r["fps_p10"], output_fps_p50=r["fps_p50"],
            startup_p50_s=r["startup_p50"], sessions=r["rows_"], counted_sessions=r["counted"],
            skipped_sessions=r["skipped"], last_tested=r["last_tested"],
            sessions_url=sessions_url(f, orchestrator=r["orchestrator"], gpu=gpu, counted="yes")))
    return LeaderboardPage(data=data, benchmark=[Benchmark(metric=k, good=a, bad=b) for k, (a, b) in bench.items()],
                           pagination=page, meta=meta(f))


# --------------------------------------------------------------------------- sessions


class SessionOut(Out):
    started_at: dt.datetime
    campaign_id: str
    session_id: str
    region: str | None = Field(description="The tester's region.")
    model: str | None
    prompt_category: str | None
    outcome: str
    error_phase: str | None
    error_class: str | None
    excused: bool | None
    orchestrator: str = Field(description="The leaderboard's key for the orchestrator that served it.")
    target: str = Field(description="The orchestrator it was aimed at (coverage's key).")
    orchestrator_address: str | None
    gpu_name: str | None
    gpu_id: str | None
    startup_s: float | None
    g2g_latency_ms: float | None
    output_fps: float | None
    swapped: bool | None
    refused_while_idle: bool | None


class SessionsPage(Out):
    data: list[SessionOut]
    pagination: Page
    meta: Meta


@router.get("/sessions", response_model=SessionsPage, tags=["fleet"],
            summary="Sessions, newest first: the ones behind any count the other endpoints give")
def sessions(request: Request, p: Annotated[SessionsQuery, Query()]) -> SessionsPage:
    from fleet.dashboard.sessions import sessions as query

    f = p.filters(context_of(request).now())
    rows, more = query(context_of(request).engine, f, limit=p.limit, offset=p.offset, **p.which())
    return SessionsPage(data=[SessionOut(**{k: r.get(k) for k in SessionOut.model_fields}) for r in rows],
                        pagination=Page(limit=p.limit, offset=p.offset, returned=len(rows), has_more=more),
                        meta=meta(f))


# --------------------------------------------------------------------------- coverage


class CoverageRow(Out):
    orchestrator: str = Field(description="The orchestrator sessions were aimed at.")
    tested_sessions: int = Field(description="Sessions that ran (sessions_url lists them).")
    skipped_sessions: int
    refused_while_idle_sessions: int
    refused_share: float | None = Field(description="Refused while idle, of the sessions the gateway saw.")
    last_refused: dt.datetime | None
    last_tested: dt.datetime | None
    sessions_url: str


class CoveragePage(Out):
    data: list[CoverageRow]
    pagination: Page
    meta: Meta


class CoverageParams(ViewQuery, Limits):
    pass


@router.get("/coverage", response_model=CoveragePage, tags=["fleet"],
            summary="Each orchestrator aimed at: its last test, skips for capacity, refusals while idle")
def coverage(request: Request, p: Annotated[CoverageParams, Query()]) -> CoveragePage:
    f = p.filters(context_of(request).now())
    part, page = paged(q.coverage(context_of(request).engine, f), p)
    return CoveragePage(data=[CoverageRow(
        orchestrator=r["orchestrator"], tested_sessions=r["tested"], skipped_sessions=r["skipped"],
        refused_while_idle_sessions=r["refused"], refused_share=r["refused"] / r["sent"] if r["sent"] else None,
        last_refused=r["last_refused"], last_tested=r["last_tested"],
        sessions_url=sessions_url(f, target=r["orchestrator"], ran="yes")) for r in part], pagination=page, meta=meta(f))


# --------------------------------------------------------------------------- qualified capacity

Status = Literal["qualified", "failing", "unproven"]


class QualifiedOrchestrator(Out):
    orchestrator: str | None = Field(description="None: slots a capacity source names no orchestrator for.")
    address: str | None
    gpu: str = Field(description="The GPU model; 'mixed' or 'unknown' when its slots cannot be split by model.")
    slots: int
    idle_slots: int
    counted_sessions: int
    sla_score: float | None
    status: Status
    sessions_url: str | None


class GPUSlots(Out):
    gpu: str
    qualified_slots: int
    failing_slots: int
    unproven_slots: int
    slots: int


class SlotTotals(Out):
    qualified_slots: int
    failing_slots: int
    unproven_slots: int
    slots: int


class QualifiedCapacity(Out):
    model: str
    window: str
    sla: float = Field(description="The SLA score a pair must reach, 0-100.")
    min_sessions: int = Field(description="Counted sessions a pair needs before it is judged.")
    read_at: dt.datetime | None = Field(description="The capacity snapshot's time.")
    by_gpu: list[GPUSlots]
    totals: SlotTotals
    data: list[QualifiedOrchestrator]
    pagination: Page


class QualifiedParams(ViewQuery, Limits):
    model: Annotated[str, Field(pattern=VALUE_PATTERN, max_length=300, description="The workflow's model id.")]
    sla: float = Field(95.0, ge=0, le=100, description="The SLA score to meet (NaaP's target: 95).")
    min_sessions: int = Field(10, ge=1, le=100_000, description="Counted sessions needed to judge a pair.")



@router.get("/capacity/qualified", response_model=QualifiedCapacity, tags=["fleet"],
            summary="A workflow's slots by SLA status (qualified, failing, unproven) and GPU model")
def qualified(request: Request, p: Annotated[QualifiedParams, Query()]) -> QualifiedCapacity:
    from fleet.dashboard.qualified import qualified_capacity

    f = p.filters(context_of(request).now())
    got = qualified_capacity(context_of(request).engine, f, sla=p.sla, min_sessions=p.min_sessions)
    judged = q.Filters(window=f.window, model=f.model, now=f.now)   # what the counts read: any region or category
    part, page = paged(got["orchestrators"], p)
    data = [QualifiedOrchestrator(
        orchestrator=r["orchestrator"], address=r["address"], gpu=r["gpu"], slots=r["slots"], idle_slots=r["idle"],
        counted_sessions=r["counted"], sla_score=r["score"], status=r["status"],
        sessions_url=sessions_url(judged, orchestrator=r["orchestrator"], counted="yes",
                                  gpu=r["gpu"] if r["gpu"] not in ("mixed", "unknown") else None)
        if r["orchestrator"] else None) for r in part]
    return QualifiedCapacity(model=got["model"], window=got["window"], sla=got["sla"], min_sessions=got["min_sessions"],
                             read_at=unix(got["read_unix"]), by_gpu=[GPUSlots(**g) for g in got["by_gpu"]],
                             totals=SlotTotals(**got["totals"]), data=data, pagination=page)


class QualifiedBucket(Out):
    start: dt.datetime = Field(description="The bucket's start (UTC).")
    read_at: dt.datetime = Field(description="The last capacity snapshot read in the bucket.")
    totals: SlotTotals
    by_gpu: list[GPUSlots]


class QualifiedSeries(Out):
    model: str
    window: str
    unit: Literal["hour", "day"] = Field(description="The bucket: hours for 1h and 24h, else days. Each pair is "
                                                      "judged on its bucket's own sessions, so an hour seldom holds "
                                                      "min_sessions of one pair: hourly buckets are mostly unproven.")
    sla: float
    min_sessions: int
    data: list[QualifiedBucket]
    pagination: Page


@router.get("/capacity/qualified/series", response_model=QualifiedSeries, tags=["fleet"],
            summary="A workflow's slots by SLA status over time: each bucket's last snapshot, judged on its sessions")
def qualified_over_time(request: Request, p: Annotated[QualifiedParams, Query()]) -> QualifiedSeries:
    from fleet.dashboard.qualified import qualified_series

    f = p.filters(context_of(request).now())
    got = qualified_series(context_of(request).engine, f, sla=p.sla, min_sessions=p.min_sessions)
    part, page = paged(got["buckets"], p)
    return QualifiedSeries(model=got["model"], window=got["window"], unit=got["unit"], sla=got["sla"],
                           min_sessions=got["min_sessions"], pagination=page, data=[QualifiedBucket(
                               start=unix(b["t_unix"]), read_at=unix(b["read_unix"]), totals=SlotTotals(**b["totals"]),
                               by_gpu=[GPUSlots(**g) for g in b["by_gpu"]]) for b in part])
