"""Screenshots of every dashboard view (docs/dashboard-*.png), from a results directory, in headless Chromium.

    python docs/make_screenshots.py RESULTS_DIR [--out docs]

The pictures in the README were made from the results of three `fleet run scenarios/smoke.yaml`
campaigns and ten minutes of `fleet monitor scenarios/monitor.yaml` against the reference gateway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from services import chromium  # noqa: E402

from fleet.dashboard.engine import DuckDBEngine  # noqa: E402
from fleet.dashboard.queries import Filters, leaderboard  # noqa: E402
from fleet.dashboard.server import DashboardServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    engine = DuckDBEngine(args.results)
    board, _ = leaderboard(engine, Filters(window="7d"))
    first = board[0]["orchestrator"] if board else ""
    server = DashboardServer(engine, args.results, port=0, quiet=True).start()
    views = {"leaderboard": "/", "orchestrator": f"/orchestrator?id={first}", "workflows": "/workflows",
             "capacity": "/capacity", "campaigns": "/campaigns"}
    try:
        with chromium("--window-size=1280,1600", "--hide-scrollbars") as driver:
            for name, path in views.items():
                driver.set_window_size(1280, 800)
                driver.get(server.url + path)
                height = driver.execute_script("return document.documentElement.scrollHeight")
                chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
                driver.set_window_size(1280, min(max(height + chrome + 20, 600), 3000))
                target = args.out / f"dashboard-{name}.png"
                driver.save_screenshot(str(target))
                print(target)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
