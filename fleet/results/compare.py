"""``fleet compare BASELINE CURRENT``: per-metric, per-group regressions beyond noise.

Both sides are session rows: a campaign directory, or a ClickHouse time window
(``clickhouse:SCENARIO@FROM..TO``, ISO times, connection from the FLEET_CLICKHOUSE_*
variables). Only sessions that count (fleet.results.verdict.counted) are compared.

For every metric and every group (overall, and per orchestrator, GPU, model, region,
prompt category) with at least ``min_sessions`` sessions on both sides:

- a number metric regresses when its median moved the bad way by more than ``threshold``
  relative to the baseline **and** by more than the noise: the two medians' bootstrap
  95 % intervals (resampled sessions) do not overlap;
- a rate (failed, degraded, swapped) regresses when it rose by more than ``rate_threshold``
  absolute **and** a one-sided two-proportion z-test gives p < 0.05.

Exit codes: 0 no regression, 3 a regression, 1 unreadable input, 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fleet.errors import UsageError
from fleet.results.sink import find_campaign, read_manifest, read_sessions
from fleet.results.verdict import GROUP_COLUMNS, counted, metric_value

__all__ = ["NUMBERS", "RATES", "Finding", "compare", "findings_json", "load_rows"]

HIGHER_IS_BETTER = {"output_fps"}
RATES = ("failed", "degraded", "swapped")
NUMBERS = ("startup_s", "playable_s", "g2g_latency_ms", "output_fps", "jitter_coeff", "freeze_s",
           "prompt_switch_ms", "signaling_ms", "ice_ms")
_CH = re.compile(r"^clickhouse:(?P<scenario>[a-z0-9][a-z0-9-]*)@(?P<start>[^.]+)\.\.(?P<end>.+)$")


@dataclass(frozen=True)
class Finding:
    metric: str
    group: str
    baseline: float
    current: float
    change: float          # relative for numbers, absolute for rates
    n_baseline: int
    n_current: int
    regression: bool
    why: str


def load_rows(source: str) -> tuple[list[dict[str, Any]], str]:
    """Session rows and a label, from a campaign directory or ``clickhouse:SCENARIO@FROM..TO``."""
    m = _CH.match(source)
    if m:
        return _from_clickhouse(m["scenario"], m["start"], m["end"]), source
    d = find_campaign(source)
    return read_sessions(d).to_pylist(), read_manifest(d).get("campaign_id", d.name)


def _from_clickhouse(scenario: str, start: str, end: str) -> list[dict[str, Any]]:
    import os

    from fleet.results.clickhouse import ClickHouseSink
    from fleet.scenario import ClickHouseOut

    try:
        t0, t1 = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    except ValueError:
        raise UsageError(f"clickhouse:{scenario}@{start}..{end}: FROM and TO must be ISO times") from None
    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", user_env="FLEET_CLICKHOUSE_USER",
                        password_env="FLEET_CLICKHOUSE_PASSWORD",
                        database=os.environ.get("FLEET_CLICKHOUSE_DATABASE", "fleet"),
                        table_prefix=os.environ.get("FLEET_CLICKHOUSE_PREFIX", "fleet_"))
    sink = ClickHouseSink(cfg)
    try:
        table = sink.query(f"SELECT * FROM {sink.table('sessions')} WHERE scenario = {{s:String}} "
                           "AND started_at >= {t0:DateTime64(3)} AND started_at < {t1:DateTime64(3)}",
                           {"s": scenario, "t0": t0, "t1": t1})
    finally:
        sink.close()
    rows: list[dict[str, Any]] = table.to_pylist()
    for r in rows:  # the sink stores missing keys as ''
        for k in ("orchestrator_address", "region"):
            if r.get(k) == "":
                r[k] = None
    return rows


def _median_ci(xs: np.ndarray, rng: np.random.Generator, n_boot: int = 400) -> tuple[float, float]:
    boots = np.median(rng.choice(xs, size=(n_boot, len(xs)), replace=True), axis=1)
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _z_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value that the second proportion is larger."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k2 / n2 <= k1 / n1 else 0.0
    z = (k2 / n2 - k1 / n1) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"overall": rows}
    for name, col in GROUP_COLUMNS.items():
        for r in rows:
            if r.get(col) is not None:
                out.setdefault(f"{name}={r[col]}", []).append(r)
    return out


def compare(base_rows: list[dict[str, Any]], cur_rows: list[dict[str, Any]], threshold: float = 0.1,
            rate_threshold: float = 0.05, min_sessions: int = 5, seed: int = 0) -> list[Finding]:
    rng = np.random.default_rng(seed)
    base_g, cur_g = _groups(counted(base_rows)), _groups(counted(cur_rows))
    findings = []
    for group in sorted(set(base_g) & set(cur_g)):
        b_rows, c_rows = base_g[group], cur_g[group]
        for metric in NUMBERS:
            b = np.array([v for v in (metric_value(r, metric) for r in b_rows) if v is not None])
            c = np.array([v for v in (metric_value(r, metric) for r in c_rows) if v is not None])
            if len(b) < min_sessions or len(c) < min_sessions:
                continue
            mb, mc = float(np.median(b)), float(np.median(c))
            change = (mc - mb) / abs(mb) if mb else (0.0 if mc == mb else math.inf)
            worse = -change if metric in HIGHER_IS_BETTER else change
            (blo, bhi), (clo, chi) = _median_ci(b, rng), _median_ci(c, rng)
            beyond_noise = (clo > bhi) if metric not in HIGHER_IS_BETTER else (chi < blo)
            regression = worse > threshold and beyond_noise
            why = (f"median {'fell' if change < 0 else 'rose'} {abs(change):.1%}"
                   + ("" if beyond_noise else " (within noise)") if worse > threshold else "")
            findings.append(Finding(metric, group, round(mb, 4), round(mc, 4), round(change, 4), len(b), len(c),
                                    regression, why))
        for metric in RATES:
            if len(b_rows) < min_sessions or len(c_rows) < min_sessions:
                continue
            kb = sum(int(metric_value(r, metric) or 0) for r in b_rows)
            kc = sum(int(metric_value(r, metric) or 0) for r in c_rows)
            rb, rc = kb / len(b_rows), kc / len(c_rows)
            p = _z_p(kb, len(b_rows), kc, len(c_rows))
            regression = rc - rb > rate_threshold and p < 0.05
            why = f"rate rose {rc - rb:+.1%} (p={p:.3f})" if rc - rb > rate_threshold else ""
            findings.append(Finding(metric, group, round(rb, 4), round(rc, 4), round(rc - rb, 4), len(b_rows),
                                    len(c_rows), regression, why))
    return findings


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]

