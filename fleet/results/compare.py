"""``fleet compare BASELINE CURRENT``: per-metric, per-group regressions beyond noise.

Both sides are session rows: a campaign directory, or a ClickHouse time window
(``clickhouse:SCENARIO@FROM..TO``, ISO times, connection from the FLEET_CLICKHOUSE_*
variables). Only sessions that count (fleet.results.verdict.counted) are compared.

For every metric and every group (overall, and per orchestrator, GPU, model, region,
prompt category) with at least ``min_sessions`` sessions on both sides:

- a number metric regresses when its median moved the bad way by more than ``threshold``
  relative to the baseline **and** beyond noise: a one-sided Mann-Whitney U test
  (scipy.stats) says the current sessions are worse;
- a rate (failed, degraded, swapped) regresses when it rose by more than ``rate_threshold``
  absolute **and** beyond noise: a one-sided two-proportion z-test says it rose.

"Beyond noise" is judged after correcting for the many comparisons (every metric in every
group): the p-values are adjusted with Benjamini-Hochberg (scipy.stats.false_discovery_control)
and must be under ``ALPHA``. Each finding also carries a bootstrap 95 % interval of the relative
median change (scipy.stats.bootstrap), for the reader.

Exit codes: 0 no regression, 3 a regression, 1 unreadable input, 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from fleet.errors import UsageError
from fleet.results.sink import find_campaign, read_manifest, read_sessions
from fleet.results.verdict import GROUP_COLUMNS, counted, metric_value

__all__ = ["NUMBERS", "RATES", "Finding", "compare", "findings_json", "load_rows"]

HIGHER_IS_BETTER = {"output_fps"}
RATES = ("failed", "degraded", "swapped")
NUMBERS = ("startup_s", "playable_s", "g2g_latency_ms", "output_fps", "jitter_coeff", "freeze_s",
           "prompt_switch_ms", "signaling_ms", "ice_ms")
ALPHA = 0.05             # the false discovery rate the regressions are held to
N_BOOT = 400
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
    p_value: float | None = None        # one-sided, this comparison alone
    p_adjusted: float | None = None     # Benjamini-Hochberg over every comparison of the run
    ci_low: float | None = None         # bootstrap 95 % interval of the relative median change (numbers)
    ci_high: float | None = None


def load_rows(source: str) -> tuple[list[dict[str, Any]], str]:
    """Session rows and a label, from a campaign directory or ``clickhouse:SCENARIO@FROM..TO``."""
    m = _CH.match(source)
    if m:
        return _from_clickhouse(m["scenario"], m["start"], m["end"]), source
    d = find_campaign(source)
    return read_sessions(d).to_pylist(), read_manifest(d).get("campaign_id", d.name)


def _from_clickhouse(scenario: str, start: str, end: str) -> list[dict[str, Any]]:

    from fleet.results.clickhouse import ClickHouseSink
    from fleet.settings import ClickHouseSettings

    try:
        t0, t1 = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    except ValueError:
        raise UsageError(f"clickhouse:{scenario}@{start}..{end}: FROM and TO must be ISO times") from None
    sink = ClickHouseSink(ClickHouseSettings().output())
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


def _change_ci(b: np.ndarray, c: np.ndarray, seed: int) -> tuple[float | None, float | None]:
    """Bootstrap 95 % interval of the relative change of the median (resampling sessions on each side)."""
    if not np.median(b):
        return None, None

    def change(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        mx = np.median(x, axis=axis)
        rel: np.ndarray = (np.median(y, axis=axis) - mx) / np.abs(mx)
        return rel

    res = stats.bootstrap((b, c), change, n_resamples=N_BOOT, method="percentile", vectorized=True,
                          rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (round(low, 4), round(high, 4)) if math.isfinite(low) and math.isfinite(high) else (None, None)


def _worse_p(b: np.ndarray, c: np.ndarray, higher_is_better: bool) -> float:
    """One-sided Mann-Whitney U p-value that the current values are worse than the baseline's."""
    if np.all(b == b[0]) and np.all(c == b[0]):
        return 1.0  # identical constants: no evidence either way (the test is undefined)
    return float(stats.mannwhitneyu(c, b, alternative="less" if higher_is_better else "greater").pvalue)


def _rate_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided two-proportion z-test p-value that the second rate is higher (pooled variance)."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k2 / n2 <= k1 / n1 else 0.0
    return float(stats.norm.sf((k2 / n2 - k1 / n1) / se))


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"overall": rows}
    for name, col in GROUP_COLUMNS.items():
        for r in rows:
            if r.get(col) is not None:
                out.setdefault(f"{name}={r[col]}", []).append(r)
    return out


def compare(base_rows: list[dict[str, Any]], cur_rows: list[dict[str, Any]], threshold: float = 0.1,
            rate_threshold: float = 0.05, min_sessions: int = 5, seed: int = 0) -> list[Finding]:
    base_g, cur_g = _groups(counted(base_rows)), _groups(counted(cur_rows))
    found: list[tuple[Finding, float]] = []
    for group in sorted(set(base_g) & set(cur_g)):
        found += _numbers(group, base_g[group], cur_g[group], threshold, min_sessions, seed)
        found += _rates(group, base_g[group], cur_g[group], rate_threshold, min_sessions)
    if not found:
        return []
    adjusted = stats.false_discovery_control([p for _, p in found], method="bh")
    out = []
    for (f, p), q in zip(found, adjusted):
        beyond_noise = float(q) < ALPHA
        why = f.why + ("" if beyond_noise or not f.why else " (within noise)")
        out.append(replace(f, regression=bool(f.why) and beyond_noise, why=why, p_value=round(p, 6),
                           p_adjusted=round(float(q), 6)))
    return out


def _numbers(group: str, b_rows: list[dict[str, Any]], c_rows: list[dict[str, Any]], threshold: float,
             min_sessions: int, seed: int) -> list[tuple[Finding, float]]:
    out = []
    for metric in NUMBERS:
        b = np.array([v for v in (metric_value(r, metric) for r in b_rows) if v is not None], dtype=float)
        c = np.array([v for v in (metric_value(r, metric) for r in c_rows) if v is not None], dtype=float)
        if len(b) < min_sessions or len(c) < min_sessions:
            continue
        mb, mc = float(np.median(b)), float(np.median(c))
        change = (mc - mb) / abs(mb) if mb else (0.0 if mc == mb else math.inf)
        worse = -change if metric in HIGHER_IS_BETTER else change
        why = f"median {'fell' if change < 0 else 'rose'} {abs(change):.1%}" if worse > threshold else ""
        low, high = _change_ci(b, c, seed)
        out.append((Finding(metric, group, round(mb, 4), round(mc, 4), round(change, 4), len(b), len(c), False, why,
                            ci_low=low, ci_high=high), _worse_p(b, c, metric in HIGHER_IS_BETTER)))
    return out


def _rates(group: str, b_rows: list[dict[str, Any]], c_rows: list[dict[str, Any]], rate_threshold: float,
           min_sessions: int) -> list[tuple[Finding, float]]:
    if len(b_rows) < min_sessions or len(c_rows) < min_sessions:
        return []
    out = []
    for metric in RATES:
        kb = sum(int(metric_value(r, metric) or 0) for r in b_rows)
        kc = sum(int(metric_value(r, metric) or 0) for r in c_rows)
        rb, rc = kb / len(b_rows), kc / len(c_rows)
        why = f"rate rose {rc - rb:+.1%}" if rc - rb > rate_threshold else ""
        out.append((Finding(metric, group, round(rb, 4), round(rc, 4), round(rc - rb, 4), len(b_rows), len(c_rows),
                            False, why), _rate_p(kb, len(b_rows), kc, len(c_rows))))
    return out


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]

