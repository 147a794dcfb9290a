"""What every API answer shares: the closed response model, a page of a list, the request's context, the
link from a count to its sessions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from fleet.dashboard import queries as q
from fleet.dashboard.context import Context
from fleet.dashboard.params import Limits

__all__ = ["Meta", "Out", "Page", "context_of", "meta", "paged", "sessions_url", "unix"]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(Out):
    limit: int
    offset: int
    returned: int
    has_more: bool


class Meta(Out):
    generated_at: dt.datetime
    window: str
    model: str | None = None
    region: str | None = None
    category: str | None = None


def meta(f: q.Filters) -> Meta:
    return Meta(generated_at=dt.datetime.now(dt.timezone.utc), window=f.window, model=f.model, region=f.region,
                category=f.category)


def sessions_url(f: q.Filters, **which: Any) -> str:
    """The /v1/sessions query listing the sessions behind a count."""
    return f"/v1/sessions?{f.query(**which)}"


def paged(rows: list[Any], lim: Limits) -> tuple[list[Any], Page]:
    part = rows[lim.offset: lim.offset + lim.limit]
    return part, Page(limit=lim.limit, offset=lim.offset, returned=len(part),
                      has_more=lim.offset + lim.limit < len(rows))



def context_of(request: Request) -> Context:
    context: Context = request.app.state.ctx
    return context


def unix(v: float | None) -> dt.datetime | None:
    return None if v is None else dt.datetime.fromtimestamp(float(v), dt.timezone.utc)
