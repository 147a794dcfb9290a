"""The capacity series: the capacity snapshots a run read, as the ``capacity`` table.

The broker re-reads the capacity source every ``refresh_s`` (``fleet.runtime.broker``); the driver takes
those reads and ``CapacitySeries`` keeps what the table should hold, so its size stays bounded
(``outputs.capacity_series``): a read that differs from the last one stored, at most every ``min_s``
(a change within it is stored by the next read after it, if it still differs), and an unchanged one
every ``max_s``. Each stored snapshot is one row per orchestrator of the workflow's model (its GPUs,
warm or not, idle, in use, price), plus one row for slots whose orchestrator is unknown (a NaaP count,
a static one), with the time it was read and how old it was when the driver took it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from fleet import __version__
from fleet.capacity import CapacitySnapshot
from fleet.results.sink import CAPACITY, SCHEMA_VERSION
from fleet.scenario.policy import CapacitySeriesOut

__all__ = ["CapacitySeries", "capacity_table"]


def capacity_table(snapshot: CapacitySnapshot, ids: Mapping[str, Any], taken_unix: float) -> pa.Table:
    """One snapshot as rows of the ``capacity`` table (``ids``: campaign_id, run_id, scenario)."""
    read = snapshot.read_unix if snapshot.read_unix is not None else taken_unix
    common = {**ids, "fleet_version": __version__, "schema_version": SCHEMA_VERSION,
              "read_at": dt.datetime.fromtimestamp(read, dt.timezone.utc), "age_s": round(max(0.0, taken_unix - read), 3),
              "source": snapshot.source, "model": snapshot.model}
    rows = [{**common, "orchestrator_address": o.address, "orchestrator_uri": o.uri,
             "gpu_ids": [g for g, _ in o.gpus], "gpu_names": [n for _, n in o.gpus], "warm": o.warm,
             "idle": o.idle, "in_use": o.in_use, "capacity": o.idle + o.in_use,
             "price_per_unit": o.price_per_unit, "pixels_per_unit": o.pixels_per_unit}
            for o in snapshot.orchestrators]
    if snapshot.anonymous_idle or snapshot.anonymous_in_use or not rows:
        rows.append({**common, "orchestrator_address": "", "orchestrator_uri": "", "gpu_ids": [], "gpu_names": [],
                     "idle": snapshot.anonymous_idle, "in_use": snapshot.anonymous_in_use,
                     "capacity": snapshot.anonymous_idle + snapshot.anonymous_in_use})
    return pa.Table.from_pylist(rows, CAPACITY)


class CapacitySeries:
    """Which reads to store: ``offer`` each read in order; it returns the rows to store, or None."""

    def __init__(self, spec: CapacitySeriesOut, ids: Mapping[str, Any]) -> None:
        self.spec, self.ids = spec, dict(ids)
        self.last: CapacitySnapshot | None = None
        self.last_at = 0.0
        self.stored = 0

    def offer(self, snapshot: CapacitySnapshot, now_unix: float | None = None) -> pa.Table | None:
        now = time.time() if now_unix is None else now_unix
        at = snapshot.read_unix if snapshot.read_unix is not None else now
        since = at - self.last_at
        if self.last is not None and since < self.spec.max_s and (snapshot == self.last or since < self.spec.min_s):
            return None
        self.last, self.last_at = snapshot, at
        self.stored += 1
        return capacity_table(snapshot, self.ids, now)
