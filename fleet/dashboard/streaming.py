"""The API's endpoints in the shapes of the network's analytics (NaaP, Cloud-SPE/livepeer-naap-analytics
``api/internal/types/streaming.go``): ``/v1/streaming/models``, ``/sla`` and ``/gpu-metrics``, so a tool that
reads NaaP reads the fleet. Their field names and envelopes are NaaP's (``{data, pagination: {next_cursor,
has_more, page_size}, meta}``, ``start`` / ``end`` / ``limit`` / ``cursor``); ``org`` is ``fleet`` (who
measured), and two fields are the fleet's own: ``orchestrator_uri`` and ``gpu_model_name`` (the fleet judges
orchestrator x GPU model; ``gpu_id`` is the GPU's id only when the hour's sessions saw one).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from fleet.dashboard.answers import Out, context_of, unix
from fleet.dashboard.params import BadRequest, Limits, Text

__all__ = ["router"]

router = APIRouter(prefix="/v1/streaming", tags=["streaming (NaaP's shapes)"])

PIPELINE = "live-video-to-video"
ORG = "fleet"           # NaaP's ``org`` names who measured: here, the fleet's own probes
DEFAULT_SPAN = dt.timedelta(hours=24)
MAX_SPAN = dt.timedelta(days=31)


class CursorPageInfo(Out):
    next_cursor: str = Field(description="Pass as ``cursor`` for the next page; empty on the last.")
    has_more: bool
    page_size: int


class NaapMeta(Out):
    generated_at: dt.datetime
    start: dt.datetime
    end: dt.datetime


class StreamingModel(Out):
    pipeline: str
    model: str
    warm_orch_count: int = Field(description="Orchestrators with a warm slot in the last snapshot.")
    gpu_slots: int
    active_streams: int
    available_capacity: int = Field(description="Slots minus active streams.")
    avg_fps: float | None = Field(description="Mean output fps of the counted sessions over the window.")


class ModelsParams(Limits):
    window: Literal["1h", "24h", "7d", "30d", "all"] = Field("24h", description="The window ending now.")


@router.get("/models", response_model=list[StreamingModel],
            summary="Per model: the last capacity snapshot's warm orchestrators and slots, and the mean output fps")
def streaming_models(request: Request, p: Annotated[ModelsParams, Query()]) -> list[StreamingModel]:
    from fleet.dashboard.network import models

    return [StreamingModel(pipeline=PIPELINE, **r) for r in models(context_of(request).engine, p.window, context_of(request).now())][
        p.offset: p.offset + p.limit]


EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)   # times outside these are not the fleet's
LATEST = dt.datetime(2999, 1, 1, tzinfo=dt.timezone.utc)


class NaapParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: dt.datetime | None = Field(None, description="Window start (RFC 3339). Default: end - 24h.")
    end: dt.datetime | None = Field(None, description="Window end (RFC 3339). Default: now.")
    limit: int = Field(50, ge=1, le=1000)
    cursor: Text = Field(None, description="Opaque cursor from the previous page: it holds the first page's window, "
                                           "so the pages cover one window even as time passes.")

    def span(self, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime, int]:
        """(start, end, offset): the cursor's when one is given, else the parameters' or their defaults."""
        if self.cursor:
            return _read_cursor(self.cursor)
        end = _utc(self.end, "end") or now or dt.datetime.now(dt.timezone.utc)
        start = _utc(self.start, "start") or max(EARLIEST, end - DEFAULT_SPAN)
        if start >= end:
            raise BadRequest("query parameter 'start': must be before 'end'")
        if end - start > MAX_SPAN:
            raise BadRequest(f"query parameters 'start' and 'end': at most {MAX_SPAN.days} days apart")
        return start, end, 0


def _utc(t: dt.datetime | None, name: str) -> dt.datetime | None:
    if t is None:
        return None
    try:
        at = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    except OverflowError:
        at = EARLIEST - dt.timedelta(days=1)
    if not EARLIEST <= at <= LATEST:
        raise BadRequest(f"query parameter {name!r}: between {EARLIEST.year} and {LATEST.year} only")
    return at


def _read_cursor(cursor: str) -> tuple[dt.datetime, dt.datetime, int]:
    try:
        start, end, offset = base64.urlsafe_b64decode(cursor.encode() + b"==").decode().split("|")
        return (dt.datetime.fromtimestamp(float(start), dt.timezone.utc),
                dt.datetime.fromtimestamp(float(end), dt.timezone.utc), max(0, int(offset)))
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise BadRequest("query parameter 'cursor': not a cursor this API gave") from None


def _cursor(start: dt.datetime, end: dt.datetime, offset: int) -> str:
    text = f"{start.timestamp()!r}|{end.timestamp()!r}|{offset}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class StreamingSLARow(Out):
    window_start: dt.datetime = Field(description="The hour (UTC).")
    org: str = Field(description="Who measured: 'fleet'.")
    orchestrator_address: str | None
    orchestrator_uri: str = Field(description="The fleet's key for the orchestrator (not in NaaP's row).")
    pipeline_id: str
    model_id: str
    gpu_id: str | None = Field(description="The GPU's id when the hour's sessions saw one; else null.")
    gpu_model_name: str = Field(description="The GPU model: the fleet judges orchestrator x GPU model.")
    requested_sessions: int = Field(description="Sessions handed to the orchestrator (not skipped for capacity, "
                                                "not the tester's failures): every rate's denominator.")
    startup_success_sessions: int
    effective_success_rate: float | None = Field(
        description="1 - (unexcused startup failures or no output) / requested (NaaP's RULE-AGGREGATE-005).")
    no_swap_rate: float | None = Field(description="1 - swapped / requested.")
    avg_output_fps: float | None = Field(description="Mean output fps of the sessions the SLA counts.")
    sla_score: float | None = Field(
        description="The network's formula, 0-100, its quality anchors taken from the same hour's sessions of the "
                    "model (NaaP: the prior 7 UTC days); null without a counted session.")


class CursorEnvelopeStreamingSLA(Out):
    data: list[StreamingSLARow]
    pagination: CursorPageInfo
    meta: NaapMeta


class StreamingGPUMetricRow(Out):
    window_start: dt.datetime
    org: str
    orchestrator_address: str | None
    orchestrator_uri: str
    pipeline_id: str
    model_id: str
    gpu_id: str | None
    gpu_model_name: str
    known_sessions_count: int = Field(description="Sessions handed to the orchestrator (requested_sessions).")
    startup_success_sessions: int
    avg_output_fps: float | None
    avg_e2e_latency_ms: float | None = Field(description="The probe's glass-to-glass latency, counted sessions.")
    swap_rate: float | None = Field(description="Swapped / known sessions.")


class CursorEnvelopeStreamingGPUMetrics(Out):
    data: list[StreamingGPUMetricRow]
    pagination: CursorPageInfo
    meta: NaapMeta


def _hourly(request: Request, p: NaapParams, known_gpu: bool = False
            ) -> tuple[list[dict[str, Any]], CursorPageInfo, NaapMeta]:
    """A page of the hourly rows, newest hour first (NaaP's order), of the groups with a session handed to the
    orchestrator (NaaP attributes none of the others to it); ``known_gpu``: only rows whose GPU is known (NaaP's
    GPU metrics leave out unresolved GPU identities)."""
    from fleet.dashboard.network import hourly

    start, end, offset = p.span(context_of(request).now())
    rows = [r for r in hourly(context_of(request).engine, start, end)   # sessions that reached the orchestrator
            if r["requested"] and (not known_gpu or r["gpu"] != "?")]
    part = rows[offset: offset + p.limit]
    more = offset + p.limit < len(rows)
    return part, CursorPageInfo(next_cursor=_cursor(start, end, offset + p.limit) if more else "", has_more=more,
                                page_size=len(part)), \
        NaapMeta(generated_at=dt.datetime.now(dt.timezone.utc), start=start, end=end)


def _naap(r: dict[str, Any]) -> dict[str, Any]:
    """The fields both NaaP-shaped rows share."""
    return {"window_start": unix(r["t_unix"]), "org": ORG, "orchestrator_address": r["address"],
            "orchestrator_uri": r["orchestrator"], "pipeline_id": PIPELINE, "model_id": r["model"],
            "gpu_id": r["one_gpu_id"] if r["n_gpu_ids"] == 1 else None, "gpu_model_name": r["gpu"],
            "startup_success_sessions": r["requested_started"], "avg_output_fps": r["fps_mean"]}


def _complement(share: float | None) -> float | None:
    return None if share is None else 1 - share


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@router.get("/sla", response_model=CursorEnvelopeStreamingSLA,
            summary="Hourly SLA per orchestrator x model x GPU model, as NaaP's /v1/streaming/sla")
def streaming_sla(request: Request, p: Annotated[NaapParams, Query()]) -> CursorEnvelopeStreamingSLA:
    part, page, meta = _hourly(request, p)
    return CursorEnvelopeStreamingSLA(pagination=page, meta=meta, data=[StreamingSLARow(
        **_naap(r), requested_sessions=r["requested"],
        effective_success_rate=_complement(_share(r["effective_failed"], r["requested"])),
        no_swap_rate=_complement(_share(r["requested_swapped"], r["requested"])),
        sla_score=r["score"]) for r in part])


@router.get("/gpu-metrics", response_model=CursorEnvelopeStreamingGPUMetrics,
            summary="Hourly per orchestrator x model x GPU model: sessions, fps, latency, swaps, as NaaP's")
def streaming_gpu_metrics(request: Request, p: Annotated[NaapParams, Query()]) -> CursorEnvelopeStreamingGPUMetrics:
    part, page, meta = _hourly(request, p, known_gpu=True)
    return CursorEnvelopeStreamingGPUMetrics(pagination=page, meta=meta, data=[StreamingGPUMetricRow(
        **_naap(r), known_sessions_count=r["requested"], avg_e2e_latency_ms=r["g2g_mean"],
        swap_rate=_share(r["requested_swapped"], r["requested"])) for r in part])
