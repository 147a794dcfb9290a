"""What the dashboard's views read: the engine, the results directory, the graduation rules and the demand."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.dashboard import queries as q
from fleet.dashboard.engine import Engine
from fleet.demand import DemandSpec, NaapDemandRow
from fleet.errors import FleetError
from fleet.graduation import GraduationRule, GraduationRules

__all__ = ["DEFAULT_RULES", "Context"]

OPTIONS_TTL_S = 30.0
NAAP_TTL_S = 300.0    # NaaP's demand is hourly: a read serves every request for five minutes
NaapRead = tuple[list[NaapDemandRow] | None, str | None]   # NaaP's rows, or why there are none
DEFAULT_RULES = GraduationRules(rules=(GraduationRule(model="*"),))   # fleet.graduation's defaults, for any model


@dataclass
class Context:
    """What the views read: the engine, the results directory (manifests, reports) and the rule files."""

    engine: Engine
    results_dir: Path | None
    rules: GraduationRules = DEFAULT_RULES
    demand: DemandSpec | None = None        # None: no demand file given
    clock: Callable[[], dt.datetime] | None = None   # where windows end (tests pin it); default: the current time

    def __post_init__(self) -> None:
        self._options: tuple[float, dict[str, list[str]]] | None = None
        self._lock = threading.Lock()
        self._naap_lock = threading.Lock()
        self._naap_cache: dict[tuple[str, dt.datetime | None], tuple[float, NaapRead]] = {}

    def now(self) -> dt.datetime | None:
        return self.clock() if self.clock else None

    def naap(self, f: q.Filters) -> NaapRead:
        """NaaP's demand rows for the window when the demand file names NaaP: (rows, None), or (None, why not)."""
        from fleet.dashboard.demand import naap_rows_for

        if self.demand is None or f.model is None:
            return None, None
        key = (f.window, f.now)
        with self._naap_lock:   # one read at a time: concurrent requests wait for it, then share it
            hit = self._naap_cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < NAAP_TTL_S:
                return hit[1]
            try:
                got: NaapRead = (naap_rows_for(self.demand, f), None)
            except FleetError as exc:
                got = (None, str(exc))
            for old in [k for k, v in self._naap_cache.items() if time.monotonic() - v[0] >= NAAP_TTL_S]:
                del self._naap_cache[old]
            self._naap_cache[key] = (time.monotonic(), got)
            return got

    def options(self) -> dict[str, list[str]]:
        with self._lock:
            if self._options is None or time.monotonic() - self._options[0] > OPTIONS_TTL_S:
                self._options = (time.monotonic(), q.options(self.engine))
            return self._options[1]


