"""Demand: how many streams of a workflow are wanted at once, per region, and where orchestrators are.

A demand file (validated like a scenario: one located line per mistake; its JSON Schema is
``fleet schema demand``)::

    demand:                          # streams wanted at once, per workflow and region
      - model: streamdiffusion
        regions: {us-east: 12, eu-west: 8}
    regions:                         # where orchestrators are, first match wins (fnmatch on the service URI)
      - match: "https://*.eu.example:*"
        region: eu-west
    naap:                            # optional: demand from NaaP for the models it reports
      url_env: FLEET_NAAP_URL        # the variable holding NaaP's base URL (never the URL itself)
      gateways: {gateway-id: us-east}

No capacity source names an orchestrator's region (go-livepeer's capabilities carry none), so the file
says where each one is; an orchestrator no pattern matches is in region ``unknown``.

NaaP's ``GET /v1/streaming/demand`` reports, per hour and gateway, the minutes streamed
(``total_minutes``) and the requests no orchestrator took (``no_orch_sessions``). A region's demand is
then the peak over the hours of the streams its gateways carried at once on average that hour
(the sum of their ``total_minutes`` / 60), with the unmet requests of the window beside it. A gateway
the file does not place is in region ``unknown``. NaaP's demand replaces the file's for a model it
reports at all; the file's stands for the others.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field, StrictInt, field_validator, model_validator

from fleet.document import load_document
from fleet.errors import CapacityError, InputError
from fleet.spec import EnvName, Spec, parse

__all__ = ["DEMAND_PATH", "NAAP_MAX_PAGES", "NAAP_PAGE_SIZE", "NAAP_TIMEOUT_S", "UNKNOWN", "Demand", "DemandSpec",
           "NaapDemandRow", "NaapDemandSource", "RegionDemand", "RegionRule", "demand_for", "load_demand", "naap_base_url", "naap_demand",
           "parse_naap_page", "read_naap_demand", "region_of"]

UNKNOWN = "unknown"                    # the region of an orchestrator (or gateway) the file does not place
DEMAND_PATH = "/v1/streaming/demand"   # NaaP's hourly demand per gateway (api/internal/types/streaming.go)
NAAP_TIMEOUT_S = 10.0                  # one page's request
NAAP_PAGE_SIZE = 1000                  # rows asked per page (NaaP's `limit`)
NAAP_MAX_PAGES = 50                    # pages followed before giving up: a window that long is a mistake
MAX_STREAMS = 1_000_000                # a declared demand beyond this is a typo

_REGION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _region(value: str) -> str:
    if not _REGION.match(value):
        raise ValueError(f"{value!r} is not a region name (allowed: letters, digits, '.', '_' and '-', "
                         "1 to 64 of them)")
    return value


Region = Annotated[str, AfterValidator(_region)]
Streams = Annotated[StrictInt, Field(ge=0, le=MAX_STREAMS)]


class Demand(Spec):
    model: str = Field(min_length=1, description="The workflow's model (the scenario's workflow.pipeline).")
    regions: dict[str, Streams] = Field(description="Streams wanted at once, per region.")

    @field_validator("regions")
    @classmethod
    def _region_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            _region(name)
        return value


class RegionRule(Spec):
    match: str = Field(min_length=1, description="An fnmatch pattern on the orchestrator's service URI, "
                                                 "e.g. \"https://*.eu.example:*\".")
    region: Region


class NaapDemandSource(Spec):
    url_env: EnvName = Field("FLEET_NAAP_URL", description="The environment variable holding NaaP's base URL.")
    gateways: dict[str, Region] = Field(default_factory=dict,
                                        description="The region each gateway serves (NaaP's `gateway` field).")


class DemandSpec(Spec):
    demand: tuple[Demand, ...] = ()
    regions: tuple[RegionRule, ...] = ()
    naap: NaapDemandSource | None = None

    @model_validator(mode="after")
    def _one_entry_per_model(self) -> DemandSpec:
        models = [d.model for d in self.demand]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise ValueError(f"model {', '.join(map(repr, twice))} has more than one demand entry (give each "
                             "model one)")
        return self


def load_demand(path: str | Path) -> DemandSpec:
    """A demand file, or an InputError with one located line per mistake."""
    return parse(DemandSpec, load_document(path, InputError), InputError)


def region_of(spec: DemandSpec, uri: str | None) -> str:
    """The region of the first rule whose pattern matches the orchestrator's URI, else ``unknown``."""
    if uri:
        for rule in spec.regions:
            if fnmatch.fnmatchcase(uri, rule.match):
                return rule.region
    return UNKNOWN


@dataclass(frozen=True)
class NaapDemandRow:
    """One row of NaaP's ``/v1/streaming/demand``: an hour of one gateway's streams of one model."""

    window_start: str
    gateway: str
    model: str | None
    total_minutes: float
    no_orch_sessions: int
    requested_sessions: int = 0


@dataclass(frozen=True)
class RegionDemand:
    """A region's demand: streams wanted at once; from NaaP, also its unmet requests and its peak hour."""

    streams: float
    unmet: int | None = None
    peak_hour: str | None = None


def naap_base_url(spec: DemandSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """NaaP's base URL from the variable the file names; None when the file names no NaaP."""
    if spec.naap is None:
        return None
    env = os.environ if environ is None else environ
    url = env.get(spec.naap.url_env, "").strip()
    if not url:
        raise InputError(f"{spec.naap.url_env} is not set: the demand file's naap.url_env names it as NaaP's "
                         "base URL (set it, or remove naap:)")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or (parsed.port or 0) > 65535:
        raise InputError(f"{spec.naap.url_env} is not an http(s) URL: it should hold NaaP's base URL, "
                         "e.g. https://naap-api.livepeer.cloud")
    return url


def _shown(url: httpx.URL) -> str:
    """The URL's scheme, host and port only: no credentials, query or path (a proxy may carry a key in its
    path), so it is safe in a message a page shows."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _num(row: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = row.get(key, 0)
    if value is None:
        return kind(0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise CapacityError(f"{where}.{key}: expected a number, got {type(value).__name__}")
    return kind(value)


def parse_naap_page(body: Any, where: str) -> tuple[list[NaapDemandRow], str | None]:
    """One page of NaaP's envelope ``{data, pagination: {next_cursor, has_more}}``: its rows and the next cursor."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise CapacityError(f"{where}: expected NaaP's page {{data: [...], pagination: {{...}}}}")
    rows = []
    for i, r in enumerate(body["data"]):
        at = f"{where}: data[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("window_start"), str) \
                or not isinstance(r.get("gateway"), str):
            raise CapacityError(f"{at}: expected an object with window_start and gateway")
        model = r.get("model_id")
        rows.append(NaapDemandRow(r["window_start"], r["gateway"], model if isinstance(model, str) and model else None,
                                  _num(r, "total_minutes", float, at), _num(r, "no_orch_sessions", int, at),
                                  _num(r, "requested_sessions", int, at)))
    page = body.get("pagination") or {}
    if not isinstance(page, dict):
        raise CapacityError(f"{where}: pagination: expected an object")
    cursor = page.get("next_cursor")
    if page.get("has_more"):
        if not isinstance(cursor, str) or not cursor:
            raise CapacityError(f"{where}: pagination.has_more without a next_cursor")
        return rows, cursor
    return rows, None


def read_naap_demand(base_url: str, start: dt.datetime, end: dt.datetime, *, timeout_s: float = NAAP_TIMEOUT_S,
                     max_pages: int = NAAP_MAX_PAGES, transport: httpx.BaseTransport | None = None
                     ) -> list[NaapDemandRow]:
    """Every demand row NaaP reports between ``start`` and ``end``, following its cursor.

    A NaaP that cannot be reached, answers an error status or something other than demand pages is a
    CapacityError of one line naming NaaP's host and path (never the URL's credentials or query)."""
    base = httpx.URL(base_url)
    url = base.copy_with(path=base.path.rstrip("/") + DEMAND_PATH)
    where = f"NaaP demand ({_shown(url)}{DEMAND_PATH})"   # its own path: the base path may carry a key
    window = {"start": _rfc3339(start), "end": _rfc3339(end), "limit": str(NAAP_PAGE_SIZE)}
    rows: list[NaapDemandRow] = []
    cursor: str | None = None
    with httpx.Client(timeout=timeout_s, transport=transport) as client:
        for _ in range(max_pages):
            try:
                # merged into the base URL's own query (a token NaaP's proxy may want), not replacing it
                resp = client.get(url.copy_merge_params({**window, **({"cursor": cursor} if cursor else {})}))
                resp.raise_for_status()
                body = resp.json()
            except httpx.TimeoutException:
                raise CapacityError(f"{where}: no answer within {timeout_s:g} s") from None
            except httpx.HTTPStatusError as exc:
                raise CapacityError(f"{where}: answered HTTP {exc.response.status_code}") from None
            except httpx.HTTPError as exc:
                raise CapacityError(f"{where}: cannot be reached ({type(exc).__name__})") from None
            except ValueError:
                raise CapacityError(f"{where}: the answer is not JSON") from None
            page, cursor = parse_naap_page(body, where)
            rows.extend(page)
            if cursor is None:
                return rows
    raise CapacityError(f"{where}: more than {max_pages} page(s) of {NAAP_PAGE_SIZE} rows (shorten the window)")


def _rfc3339(t: dt.datetime) -> str:
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def naap_demand(rows: Iterable[NaapDemandRow], spec: DemandSpec, model: str) -> dict[str, RegionDemand] | None:
    """The model's demand per region from NaaP's rows; None when NaaP reports no row of the model."""
    gateways = spec.naap.gateways if spec.naap else {}
    per_hour: dict[tuple[str, str], float] = {}   # (region, hour) -> streams at once that hour
    unmet: dict[str, int] = {}
    for r in rows:
        if r.model != model:
            continue
        region = gateways.get(r.gateway, UNKNOWN)
        per_hour[region, r.window_start] = per_hour.get((region, r.window_start), 0.0) + r.total_minutes / 60.0
        unmet[region] = unmet.get(region, 0) + r.no_orch_sessions
    if not unmet:
        return None
    out = {}
    for region in sorted(unmet):
        hours = sorted((-streams, hour) for (reg, hour), streams in per_hour.items() if reg == region)
        out[region] = RegionDemand(round(-hours[0][0], 3), unmet[region], hours[0][1])
    return out


def demand_for(spec: DemandSpec, model: str, naap_rows: Sequence[NaapDemandRow] | None = None
               ) -> tuple[str, dict[str, RegionDemand]]:
    """The model's demand per region and where it came from: ``naap``, ``file``, or ``none`` (no source names it)."""
    if naap_rows is not None:
        found = naap_demand(naap_rows, spec, model)
        if found is not None:
            return "naap", found
    entry = next((d for d in spec.demand if d.model == model), None)
    if entry is None:
        return "none", {}
    return "file", {region: RegionDemand(float(n)) for region, n in entry.regions.items()}
