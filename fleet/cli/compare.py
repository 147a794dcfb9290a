"""``fleet compare BASELINE CURRENT``: flag per-metric, per-group regressions beyond noise.

BASELINE and CURRENT are campaign directories (or a results directory holding exactly one
campaign), or ClickHouse time windows ``clickhouse:SCENARIO@FROM..TO``. Exit codes: 0 no
regression, 3 a regression, 1 unreadable input, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


EXIT_REGRESSION = 3


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("compare", help="flag regressions between two campaigns", description=__doc__)
    p.add_argument("baseline", metavar="BASELINE")
    p.add_argument("current", metavar="CURRENT")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="relative change of a median that counts (default 0.10 = 10 %%)")
    p.add_argument("--rate-threshold", type=float, default=0.05,
                   help="absolute rise of a failure/degraded/swap rate that counts (default 0.05)")
    p.add_argument("--min-sessions", type=int, default=5, help="least sessions per side and group (default 5)")
    p.add_argument("--json", action="store_true", help="every comparison as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.results.compare import compare, findings_json, load_rows

    base, base_label = load_rows(args.baseline)
    cur, cur_label = load_rows(args.current)
    findings = compare(base, cur, args.threshold, args.rate_threshold, args.min_sessions)
    bad = [f for f in findings if f.regression]
    if args.json:
        print(json.dumps({"baseline": base_label, "current": cur_label, "regressions": len(bad),
                          "findings": findings_json(findings)}, indent=2))
    else:
        print(f"baseline {base_label} ({len(base)} sessions) -> current {cur_label} ({len(cur)} sessions): "
              f"{len(findings)} comparisons, {len(bad)} regressions")
        for f in bad:
            ci = f"; 95% CI {f.ci_low:+.1%}..{f.ci_high:+.1%}" if f.ci_low is not None and f.ci_high is not None else ""
            print(f"REGRESSION {f.metric} [{f.group}]: {f.baseline:g} -> {f.current:g} ({f.why}{ci}; "
                  f"p={f.p_value:.2g}, adjusted {f.p_adjusted:.2g}; n={f.n_baseline}/{f.n_current})")
        if not findings:
            print(f"nothing to compare: no group has {args.min_sessions} sessions on both sides")
    return EXIT_REGRESSION if bad else 0
