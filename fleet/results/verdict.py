"""SLA verdicts on a campaign's merged session rows: the scenario's checks, goodput, the SLA score.

Which sessions count. A session ``skipped_no_capacity`` never ran, a ``tester``
failure is the fleet's own, and an ``excused`` failure is one NaaP does not hold
against the orchestrator ("whip disconnected", "missing video", "ICE connection
state failed", ...: shared/LIVEPEER.md): none of them counts for or against the
network. They are left out of every metric except the ``skipped_no_capacity``
rate (over all sessions), the ``excused`` rate (over the sessions that ran) and
the coverage term of the SLA score.

- **Checks** (``scenario.checks``): each metric's aggregate over the counted sessions,
  overall or per group (``group_by``: orchestrator, gpu, model, region, prompt_category),
  compared with its threshold. Percentiles are exact (linear interpolation) over
  session values; ``rate`` is the share of counted sessions with the flag.
- **Goodput**: the share of counted sessions that met every per-session threshold
  (outcome ``ok``).
- **SLA score** (../shared/LIVEPEER.md): 100 · coverage · (0.7 · reliability + 0.3 · quality),
  reliability = 0.4 · startup success + 0.2 · no-swap rate + 0.4 · output viability,
  quality = 0.6 · (0.6 · ptff score + 0.4 · e2e score) + 0.4 · fps score. Component
  scores interpolate each session against a benchmark: 1 at or better than its p50 (fps:
  its p50), 0 at or worse than its p90 (fps: its p10). The network uses a 7-day
  benchmark; the fleet uses the stored 7-day history of the model when it spans enough days
  (``history_baseline``), or a baseline campaign's sessions when given one, else the scenario's own
  thresholds (p90 = the threshold, p50 = half of it; fps: p10 = the
  minimum, p50 = 1.25 × it). Coverage = counted sessions / (sessions − tester failures);
  startup success = a first frame arrived; output viability = output fps at least the
  scenario's minimum.
"""

from __future__ import annotations

from collections.abc import Callable

import datetime as dt
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleet.metrics import METRICS, parse_aggregate
from fleet.results.row import SessionRow
from fleet.scenario import CheckSpec, Scenario, SessionThresholds

__all__ = ["AbortWatch", "CheckResult", "HISTORY_DAYS", "Verdict", "counted", "evaluate", "evaluate_checks",
           "history_baseline", "junit_xml", "metric_value", "sla_score"]

GROUP_COLUMNS = {"orchestrator": "orchestrator_address", "gpu": "gpu_name", "model": "model", "region": "region",
                 "prompt_category": "prompt_category"}
_OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def counted(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sessions that ran and whose outcome is the network's (not skipped, not a tester failure, not excused)."""
    return [r for r in rows if r["outcome"] != "skipped_no_capacity" and r.get("error_phase") != "tester"
            and not (r["outcome"] == "failed" and r.get("excused"))]


def metric_value(row: dict[str, Any], metric: str) -> float | None:
    if METRICS[metric].kind == "flag":
        if metric in ("swapped", "excused"):
            return 1.0 if row.get(metric) else 0.0
        return 1.0 if row["outcome"] == metric else 0.0
    v = row.get(metric)
    if isinstance(v, list):  # prompt_switch_ms: every switch of the session
        return float(np.median(v)) if v else None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def aggregate(values: list[float], how: str) -> float | None:
    if not values:
        return None
    kind, q = parse_aggregate(how)
    if kind == "percentile":
        assert q is not None
        return float(np.percentile(np.asarray(values, dtype=float), q))
    if kind in ("mean", "rate"):
        return float(np.mean(values))
    return float(min(values) if kind == "min" else max(values))


@dataclass(frozen=True)
class CheckResult:
    check: str
    metric: str
    aggregate: str
    op: str
    threshold: float
    group: dict[str, str | None]
    value: float | None
    sessions: int
    passed: bool | None  # None: no session had a value

    @property
    def group_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.group.items()) or "overall"


@dataclass
class Verdict:
    checks: list[CheckResult]
    goodput: float | None
    goodput_by: dict[str, dict[str, float | None]]
    sla: dict[str, Any]
    sessions: int
    counted: int

    @property
    def breached(self) -> list[CheckResult]:
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": not self.breached, "breaches": len(self.breached), "goodput": self.goodput,
                "goodput_by": self.goodput_by, "sla": self.sla, "sessions": self.sessions, "counted": self.counted,
                "checks": [{**asdict(c), "group_label": c.group_label} for c in self.checks]}


def _groups(rows: list[dict[str, Any]], by: tuple[str, ...]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(GROUP_COLUMNS[g]) for g in by), []).append(r)
    return out


def _in_pool(check: CheckSpec, row: dict[str, Any]) -> bool:
    """Does ``row`` count for ``check``? The skipped rate is over every session, the excused rate over
    the sessions that ran, every other metric over the counted sessions."""
    if check.metric == "skipped_no_capacity":
        return True
    if check.metric == "excused":
        return row["outcome"] != "skipped_no_capacity" and row.get("error_phase") != "tester"
    return bool(counted([row]))


def _check(check: CheckSpec, rows: list[dict[str, Any]], all_rows: list[dict[str, Any]]) -> list[CheckResult]:
    pool = [r for r in all_rows if _in_pool(check, r)]
    results = []
    for key, group in sorted(_groups(pool, check.group_by).items(), key=lambda kv: str(kv[0])):
        values = [v for v in (metric_value(r, check.metric) for r in group) if v is not None]
        value = aggregate(values, check.aggregate)
        passed = None if value is None else _OPS[check.op](value, check.threshold)
        results.append(CheckResult(check.label, check.metric, check.aggregate, check.op, check.threshold,
                                   dict(zip(check.group_by, key)), None if value is None else round(value, 6),
                                   len(values), passed))
    return results


def _interp(v: float | None, good: float, bad: float) -> float | None:
    """1 at or better than ``good``, 0 at or worse than ``bad``, linear between (either direction)."""
    if v is None:
        return None
    if good == bad:
        return 1.0 if (v <= good if bad > good else v >= good) else 0.0
    return min(1.0, max(0.0, (bad - v) / (bad - good)))


def _benchmark(t: SessionThresholds, baseline: list[dict[str, Any]] | None) -> dict[str, tuple[float, float]]:
    """(good, bad) anchors per component: from a baseline's sessions, else from the thresholds."""
    def pct(metric: str, q: float) -> float | None:
        xs = [v for v in (metric_value(r, metric) for r in baseline or []) if v is not None]
        return float(np.percentile(xs, q)) if len(xs) >= 5 else None

    out = {"startup_s": (t.max_startup_s / 2, t.max_startup_s),
           "g2g_latency_ms": (t.max_g2g_latency_ms / 2, t.max_g2g_latency_ms),
           "output_fps": (t.min_output_fps * 1.25, t.min_output_fps)}
    if baseline:
        for metric in ("startup_s", "g2g_latency_ms"):
            p50, p90 = pct(metric, 50), pct(metric, 90)
            if p50 is not None and p90 is not None:
                out[metric] = (p50, p90)
        p50, p10 = pct("output_fps", 50), pct("output_fps", 10)
        if p50 is not None and p10 is not None:
            out["output_fps"] = (p50, p10)
    return out


def sla_score(all_rows: list[dict[str, Any]], t: SessionThresholds,
              baseline: list[dict[str, Any]] | None = None, benchmark: str | None = None) -> dict[str, Any]:
    """The network's SLA score formula over this campaign's sessions (see the module doc)."""
    rows = counted(all_rows)
    eligible = [r for r in all_rows if r.get("error_phase") != "tester"]
    if not rows:
        return {"score": None, "coverage": 0.0 if eligible else None}
    bench = _benchmark(t, baseline)

    def component(metric: str) -> float | None:
        return _mean([s for s in (_interp(metric_value(r, metric), *bench[metric]) for r in rows) if s is not None])

    ptff, e2e, fps = component("startup_s"), component("g2g_latency_ms"), component("output_fps")
    parts = sla_combine(coverage=len(rows) / len(eligible),
                        startup_success=_share(rows, lambda r: r.get("startup_s") is not None),
                        no_swap_rate=_share(rows, lambda r: not r.get("swapped")),
                        output_viability=_share(rows, lambda r: (r.get("output_fps") or 0) >= t.min_output_fps),
                        ptff=ptff, e2e=e2e, fps=fps)
    return {**{k: round(v or 0.0, 2) if k == "score" else _round4(v) for k, v in parts.items()},
            "ptff_score": _round4(ptff), "e2e_score": _round4(e2e), "fps_score": _round4(fps),
            "benchmark": (benchmark or "baseline") if baseline else "thresholds",
            "anchors": {k: [round(a, 3), round(b, 3)] for k, (a, b) in bench.items()}}


def sla_combine(coverage: float | None, startup_success: float, no_swap_rate: float, output_viability: float,
                ptff: float | None, e2e: float | None, fps: float | None) -> dict[str, float | None]:
    """The network's SLA score from its parts (every share in 0..1; a quality component with no values counts
    0): the one place its weights are written. The verdict and the dashboard both call it."""
    reliability = 0.4 * startup_success + 0.2 * no_swap_rate + 0.4 * output_viability
    quality = 0.6 * (0.6 * (ptff or 0.0) + 0.4 * (e2e or 0.0)) + 0.4 * (fps or 0.0)
    return {"score": 100 * (coverage or 0.0) * (0.7 * reliability + 0.3 * quality), "coverage": coverage,
            "reliability": reliability, "quality": quality, "startup_success": startup_success,
            "no_swap_rate": no_swap_rate, "output_viability": output_viability}


def evaluate_checks(checks: Iterable[CheckSpec], all_rows: list[dict[str, Any]]) -> list[CheckResult]:
    rows = counted(all_rows)
    return [res for check in checks for res in _check(check, rows, all_rows)]


class AbortWatch:
    """The scenario's ``abort`` checks, evaluated as sessions finish: each keeps only its metric's values
    per group, and a batch re-aggregates only the groups it touched. A check fires once a group has
    ``abort_min_sessions`` values and the campaign has run ``abort_after_s``."""

    def __init__(self, checks: Iterable[CheckSpec]) -> None:
        self.checks = [c for c in checks if c.abort]
        self.values: list[dict[tuple[Any, ...], list[float]]] = [{} for _ in self.checks]

    def add(self, batch: Iterable[SessionRow], elapsed_s: float) -> CheckResult | None:
        """Take finished sessions; the first breached check (and group), if any."""
        rows = [r.record() for r in batch]   # as stored: the checks read the stored rows the same way
        for check, groups in zip(self.checks, self.values):
            touched = set()
            for r in rows:
                value = metric_value(r, check.metric) if _in_pool(check, r) else None
                if value is None:
                    continue
                key = tuple(r.get(GROUP_COLUMNS[g]) for g in check.group_by)
                groups.setdefault(key, []).append(value)
                touched.add(key)
            if elapsed_s < check.abort_after_s:
                continue
            for key in sorted(touched, key=str):
                values = groups[key]
                if len(values) < check.abort_min_sessions:
                    continue
                value = aggregate(values, check.aggregate)
                if value is not None and not _OPS[check.op](value, check.threshold):
                    return CheckResult(check.label, check.metric, check.aggregate, check.op, check.threshold,
                                       dict(zip(check.group_by, key)), round(value, 6), len(values), False)
        return None


HISTORY_DAYS = 7           # NaaP's SLA benchmark window
HISTORY_MIN_DAYS = 3       # the stored results must span this many days of it ...
HISTORY_MIN_SESSIONS = 30  # ... and hold this many counted sessions of the model


def history_baseline(results_dir: str | Path, model: str, today: dt.date | None = None,
                     exclude: str | None = None) -> tuple[list[dict[str, Any]], str] | None:
    """The model's counted sessions of the last ``HISTORY_DAYS`` days under ``results_dir`` (every campaign's
    ``date=`` partitions but ``exclude``), and a label for the report; None when they span fewer than
    ``HISTORY_MIN_DAYS`` days or hold fewer than ``HISTORY_MIN_SESSIONS`` sessions."""
    import pyarrow.parquet as pq

    from fleet.results.sink import SESSIONS

    today = today or dt.datetime.now(dt.timezone.utc).date()
    first = today - dt.timedelta(days=HISTORY_DAYS - 1)
    rows: list[dict[str, Any]] = []
    days: set[str] = set()
    columns = ["model", "outcome", "error_phase", "excused", "startup_s", "g2g_latency_ms", "output_fps"]
    for part in sorted(Path(results_dir).glob("campaign=*/date=*")):
        if exclude and part.parent.name == f"campaign={exclude}":
            continue
        try:
            day = dt.date.fromisoformat(part.name.split("=", 1)[1])
        except ValueError:
            continue
        if not first <= day <= today:
            continue
        for f in sorted(part.glob("**/sessions-*.parquet")):
            table = pq.read_table(f, schema=SESSIONS, columns=columns)
            found = [r for r in counted(table.to_pylist()) if r["model"] == model]
            if found:
                rows += found
                days.add(day.isoformat())
    if len(days) < HISTORY_MIN_DAYS or len(rows) < HISTORY_MIN_SESSIONS:
        return None
    return rows, f"{HISTORY_DAYS}-day history ({len(rows)} sessions over {len(days)} days)"


def evaluate(scenario: Scenario, all_rows: list[dict[str, Any]],
             baseline: list[dict[str, Any]] | None = None, benchmark: str | None = None) -> Verdict:
    rows = counted(all_rows)
    results = evaluate_checks(scenario.checks, all_rows)
    by = {name: {str(k[0]): _goodput(v) for k, v in sorted(_groups(rows, (name,)).items(), key=lambda kv: str(kv[0]))}
          for name in GROUP_COLUMNS}
    return Verdict(results, _goodput(rows), by, sla_score(all_rows, scenario.workflow.thresholds, baseline, benchmark),
                   len(all_rows), len(rows))


def junit_xml(verdict: Verdict, suite: str) -> bytes:
    """JUnit XML: one test case per check and group; a breach is a failure, no data is skipped."""
    cases = verdict.checks
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                       failures=str(len(verdict.breached)), skipped=str(sum(1 for c in cases if c.passed is None)))
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{c.metric}", name=f"{c.check} [{c.group_label}]")
        if c.passed is False:
            ET.SubElement(tc, "failure", message=f"{c.aggregate}({c.metric}) = {c.value:g}, wanted {c.op} "
                                                 f"{c.threshold:g} over {c.sessions} sessions")
        elif c.passed is None:
            ET.SubElement(tc, "skipped", message="no session had a value")
    props = ET.SubElement(ts, "properties")
    for k, v in (("goodput", verdict.goodput), ("sla_score", verdict.sla.get("score"))):
        ET.SubElement(props, "property", name=k, value=str(v))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _goodput(rows: list[dict[str, Any]]) -> float | None:
    """The share of sessions that were ok."""
    return round(sum(1 for r in rows if r["outcome"] == "ok") / len(rows), 4) if rows else None


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _share(rows: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> float:
    """The share of ``rows`` (not empty) that pass ``test``."""
    return sum(1.0 for r in rows if test(r)) / len(rows)


def _round4(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
