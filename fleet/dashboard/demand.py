"""Demand gaps: a workflow's demand per region against its SLA-qualified slots there, by GPU model.

The slots and their status come from ``fleet.dashboard.qualified.qualified_capacity`` (the last capacity
snapshot of the window, each orchestrator judged on its sessions); each orchestrator is placed in a region
by the demand file's ``regions`` rules (``fleet.demand.region_of``: no capacity source names a region);
the demand per region comes from NaaP's rows when given and they report the model, else from the file.

Per region: ``gap`` is the demand the qualified slots do not cover (``max(0, demand - qualified)``),
``surplus`` the qualified slots beyond the demand. Streams do not cross regions, so the totals' gap and
surplus are the sums of the regions' (a surplus in one region does not fill a gap in another). Every region
with demand or slots appears, ``unknown`` included (orchestrators no rule places, slots of no known
orchestrator).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from fleet.dashboard.engine import Engine
from fleet.dashboard.qualified import MIN_SESSIONS, SLA_TARGET, STATUSES, qualified_capacity
from fleet.dashboard.queries import WINDOWS, Filters
from fleet.demand import DemandSpec, NaapDemandRow, demand_for, naap_base_url, read_naap_demand, region_of

__all__ = ["NAAP_ALL_WINDOW", "demand_gaps", "naap_rows_for"]

NAAP_ALL_WINDOW = dt.timedelta(days=30)   # how far back NaaP's demand is read for the "all" window
HOUR = dt.timedelta(hours=1)


def naap_rows_for(spec: DemandSpec, f: Filters, environ: Mapping[str, str] | None = None
                  ) -> list[NaapDemandRow] | None:
    """NaaP's demand rows over the filter's window, when the demand file names NaaP (else None): the whole
    hours that end by the window's end (at least the last one)."""
    base = naap_base_url(spec, environ)
    if base is None:
        return None
    # whole hours only: NaaP's rows are hourly, and the current hour's is still filling (it would read low)
    end = (f.now or dt.datetime.now(dt.timezone.utc)).replace(minute=0, second=0, microsecond=0)
    return read_naap_demand(base, end - max(HOUR, WINDOWS[f.window] or NAAP_ALL_WINDOW), end)


def _slots() -> dict[str, Any]:
    return {**{f"{s}_slots": 0 for s in STATUSES}, "slots": 0}


def demand_gaps(engine: Engine, f: Filters, spec: DemandSpec, naap_rows: Sequence[NaapDemandRow] | None = None,
                sla: float = SLA_TARGET, min_sessions: int = MIN_SESSIONS) -> dict[str, Any]:
    """The model's demand and qualified slots per region (and per region x GPU), their gaps and totals."""
    capacity = qualified_capacity(engine, f, sla=sla, min_sessions=min_sessions)
    source, demand = demand_for(spec, capacity["model"], naap_rows)
    regions: dict[str, dict[str, Any]] = {}
    pairs: dict[tuple[str, str], dict[str, Any]] = {}

    def region(name: str) -> dict[str, Any]:
        return regions.setdefault(name, {"region": name, "demand_streams": 0.0, "unmet_requests": None,
                                         "peak_hour": None, **_slots(), "qualified_by_gpu": {}})

    for name, d in demand.items():
        region(name).update(demand_streams=d.streams, unmet_requests=d.unmet, peak_hour=d.peak_hour)
    for o in capacity["orchestrators"]:
        r = region(region_of(spec, o["orchestrator"]))
        p = pairs.setdefault((r["region"], o["gpu"]), {"region": r["region"], "gpu": o["gpu"], **_slots()})
        for row in (r, p):
            row[f"{o['status']}_slots"] += o["slots"]
            row["slots"] += o["slots"]
        if o["status"] == "qualified":
            r["qualified_by_gpu"][o["gpu"]] = r["qualified_by_gpu"].get(o["gpu"], 0) + o["slots"]
    for r in regions.values():
        r["qualified_by_gpu"] = dict(sorted(r["qualified_by_gpu"].items()))
        r["gap"] = round(max(0.0, r["demand_streams"] - r["qualified_slots"]), 3)
        r["surplus"] = round(max(0.0, r["qualified_slots"] - r["demand_streams"]), 3)
    rows = sorted(regions.values(), key=lambda r: r["region"])
    totals = {key: sum(r[key] for r in rows) for key in ("demand_streams", "gap", "surplus", "slots",
                                                         *(f"{s}_slots" for s in STATUSES))}
    for key in ("demand_streams", "gap", "surplus"):
        totals[key] = round(totals[key], 3)
    return {"model": capacity["model"], "window": f.window, "sla": sla, "min_sessions": min_sessions,
            "read_unix": capacity["read_unix"], "demand_source": source, "regions": rows,
            "by_gpu": sorted(pairs.values(), key=lambda p: (p["region"], p["gpu"])), "totals": totals}
