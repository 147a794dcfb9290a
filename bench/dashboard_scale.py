"""Is the dashboard fast at network scale? Each view's queries, and each page and API call end to end,
over 1 million sessions, 30 million per-second samples and 30 days of capacity snapshots, engine against engine.

It writes a synthetic dataset in the fleet's own Parquet layout (``--sessions`` rows over 30 days,
500 orchestrators, 3 GPU types, 4 models, 8 prompt categories, 5 regions; ``--samples`` rows
of per-second samples; a capacity snapshot of the 500 orchestrators every ``--snapshot-min``
minutes for 30 days), then times every query each view runs (``--repeat`` times, the median):

- DuckDB in process over the Parquet files (the dashboard's default);
- ClickHouse's engine (chdb, in process, behind the tests' HTTP front, MergeTree tables made by
  the fleet's own DDL and filled from the same files), through the same ``ClickHouseEngine``.

Then, on each engine, every page and every API call as a user gets it: an HTTP GET to the real server
(``DashboardServer`` on 127.0.0.1, uvicorn, the clock pinned to the data's end, a graduation rule and a
demand file placing the 500 orchestrators in the 5 regions), queries, rendering and charts included. Each
route is asked once first (its cold time, first imports included, reported apart), then ``--repeat`` times
(the median); every answer must be a 200.

    python bench/dashboard_scale.py [--sessions 1000000] [--samples 30000000] [--repeat 3] [--no-clickhouse]

Prints a line per view (and per route) and engine and, last, one JSON object with every timing (seconds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

from fleet.dashboard import queries as q  # noqa: E402
from fleet.dashboard.engine import DuckDBEngine  # noqa: E402
from fleet.dashboard.graduation import daily  # noqa: E402
from fleet.dashboard.qualified import qualified_capacity  # noqa: E402
from fleet.dashboard.server import DashboardServer  # noqa: E402
from fleet.demand import DemandSpec  # noqa: E402
from fleet.graduation import GraduationRule, GraduationRules  # noqa: E402
from fleet.results.sink import CAPACITY, SAMPLES, SESSIONS  # noqa: E402

NOW = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
ORCHS, CHUNK = 500, 250_000
GPUS = np.array(["NVIDIA GeForce RTX 4090", "NVIDIA L40S", "NVIDIA A100"])
MODELS = np.array(["streamdiffusion", "streamdiffusion-sdxl", "comfyui", "noop"])
CATS = np.array(["portraits", "landscapes", "cartoon", "lighting-weather", "materials", "art-styles", "scifi", "text"])
REGIONS = np.array(["us-east", "us-west", "eu-west", "eu-central", "ap-south"])
OUTCOMES = np.array(["ok", "degraded", "failed", "skipped_no_capacity"])
TARGET_S = 1.0          # issue #24: every view and API call under 1 s at this scale
REQUEST_TIMEOUT_S = 300.0


def orch_uri(orch: np.ndarray) -> np.ndarray:
    """The orchestrators' service URIs: the sessions' ``orchestrator_url`` and the snapshots' ``orchestrator_uri``."""
    return np.char.add(np.char.add("https://orch-", orch.astype(str)), ".example:8935")


ONE = str(orch_uri(np.array([7]))[0])     # the orchestrator the one-orchestrator views show
# The demand file: streamdiffusion's streams per region, and each orchestrator placed by its number's last digit.
DEMAND = DemandSpec.model_validate({
    "demand": [{"model": "streamdiffusion", "regions": {str(r): 40 + 10 * i for i, r in enumerate(REGIONS)}}],
    "regions": [{"match": f"https://orch-*[{d}{d + 5}].example:*", "region": str(r)} for d, r in enumerate(REGIONS)]})
RULES = GraduationRules(rules=(GraduationRule(model="streamdiffusion"), GraduationRule(model="*")))
ROUTES = (  # (name, path): every page and every API call
    ("page /", "/"),
    ("page /?by=gpu", "/?by=gpu"),
    ("page /orchestrator", "/orchestrator?" + urlencode({"id": ONE})),
    ("page /workflows", "/workflows"),
    ("page /capacity 30d model", "/capacity?model=streamdiffusion&window=30d"),
    ("page /capacity/series 30d", "/capacity/series?model=streamdiffusion&window=30d"),
    ("page /graduation", "/graduation?model=streamdiffusion"),
    ("page /demand", "/demand?model=streamdiffusion"),
    ("page /sessions", "/sessions?" + urlencode({"orchestrator": ONE, "counted": "yes"})),
    ("page /campaigns", "/campaigns"),
    ("api leaderboard", "/v1/leaderboard"),
    ("api sessions", "/v1/sessions"),
    ("api coverage", "/v1/coverage"),
    ("api capacity/qualified", "/v1/capacity/qualified?model=streamdiffusion"),
    ("api capacity/qualified/series 30d", "/v1/capacity/qualified/series?model=streamdiffusion&window=30d"),
    ("api graduation", "/v1/graduation?model=streamdiffusion"),
    ("api demand/gaps", "/v1/demand/gaps?model=streamdiffusion"),
    ("api streaming/models", "/v1/streaming/models"),
    ("api streaming/sla", "/v1/streaming/sla"),
    ("api streaming/gpu-metrics", "/v1/streaming/gpu-metrics"),
)


def table(schema: pa.Schema, columns: dict[str, pa.Array], n: int) -> pa.Table:
    return pa.Table.from_arrays([columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
                                 for f in schema], schema=schema)


def build(out: Path, sessions: int, samples: int) -> None:
    rng = np.random.default_rng(1)
    per_session = max(1, samples // sessions)
    for part, start in enumerate(range(0, sessions, CHUNK)):
        n = min(CHUNK, sessions - start)
        orch = rng.integers(0, ORCHS, n)
        gpu = orch % 3
        quality = 1 + (orch % 7) / 10
        outcome = rng.choice(4, n, p=[0.8, 0.1, 0.07, 0.03])
        ran = outcome < 2
        started = NOW.timestamp() - rng.uniform(0, 30 * 86400, n)
        url = orch_uri(orch)
        cols = {
            "campaign_id": pa.array(np.char.add("bench-", (start // CHUNK + (orch % 20)).astype(str))),
            "session_id": pa.array(np.char.add("s", np.arange(start, start + n).astype(str))),
            "orchestrator_url": pa.array(url), "target_orchestrator": pa.array(url),
            "orchestrator_address": pa.array(np.char.add("0x", orch.astype(str))),
            "gpu_name": pa.array(GPUS[gpu]), "gpu_id": pa.array(np.char.add("GPU-", orch.astype(str))),
            "model": pa.array(MODELS[rng.integers(0, 4, n)]), "prompt_category": pa.array(CATS[rng.integers(0, 8, n)]),
            "region": pa.array(REGIONS[rng.integers(0, 5, n)]), "outcome": pa.array(OUTCOMES[outcome]),
            "error_phase": pa.array(np.where(outcome == 2, "pipeline", np.where(outcome == 3, "capacity", None))),
            "excused": pa.array(np.where(outcome == 2, rng.random(n) < 0.3, False)),
            "started_at": pa.array((started * 1000).astype("int64")).cast(pa.timestamp("ms", tz="UTC")),
            "startup_s": pa.array(np.where(ran, rng.gamma(4, 0.6, n) * quality, np.nan), from_pandas=True),
            "g2g_latency_ms": pa.array(np.where(ran, rng.normal(90, 10, n) * quality, np.nan), from_pandas=True),
            "output_fps": pa.array(np.where(ran, rng.normal(28, 2, n) / quality, np.nan), from_pandas=True),
            "jitter_coeff": pa.array(np.where(ran, rng.uniform(0.02, 0.2, n), np.nan), from_pandas=True),
            "swapped": pa.array(rng.random(n) < 0.02), "duration_s": pa.array(np.full(n, 30.0)),
        }
        d = out / f"campaign=bench-{part:02d}" / "date=2026-11-20"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(table(SESSIONS, cols, n), d / "sessions-00001.parquet")
        m = n * per_session
        idx = np.repeat(np.arange(n), per_session)
        sample_cols = {k: cols[k].take(pa.array(idx)) for k in ("campaign_id", "session_id", "orchestrator_url",
                                                                "orchestrator_address", "gpu_name", "model",
                                                                "region", "prompt_category")}
        sample_cols.update({"t_s": pa.array(np.tile(np.arange(per_session, dtype=float), n)),
                            "fps_out": pa.array(rng.integers(20, 31, m).astype("int32")),
                            "fps_in": pa.array(np.full(m, 30, dtype="int32")),
                            "latency_ms_p50": pa.array(rng.normal(90, 10, m))})
        pq.write_table(table(SAMPLES, sample_cols, m), d / "samples-00001.parquet")
        print(f"built {start + n} sessions, {(start + n) * per_session} samples", flush=True)


def build_capacity(out: Path, every_min: float) -> int:
    """A snapshot of every orchestrator every ``every_min`` minutes for 30 days (two GPUs each, its type)."""
    rng = np.random.default_rng(2)
    reads = np.arange(NOW.timestamp() - 30 * 86400, NOW.timestamp(), every_min * 60)
    n = len(reads) * ORCHS
    orch = np.tile(np.arange(ORCHS), len(reads))
    slots = 2 + orch % 4
    in_use = rng.integers(0, 3, n) % (slots + 1)
    names = pa.array(np.repeat(GPUS[orch % 3], 2))
    names = names.combine_chunks() if isinstance(names, pa.ChunkedArray) else names   # pyarrow chunks big ones
    cols = {"campaign_id": pa.array(np.full(n, "bench-monitor")), "run_id": pa.array(np.full(n, "bench-monitor")),
            "read_at": pa.array((np.repeat(reads, ORCHS) * 1000).astype("int64")).cast(pa.timestamp("ms", tz="UTC")),
            "source": pa.array(np.full(n, "gateway")), "model": pa.array(np.full(n, "streamdiffusion")),
            "orchestrator_uri": pa.array(orch_uri(orch)),
            "orchestrator_address": pa.array(np.char.add("0x", orch.astype(str))),
            "gpu_names": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype="int32")), names),
            "capacity": pa.array(slots), "in_use": pa.array(in_use), "idle": pa.array(slots - in_use),
            "age_s": pa.array(np.zeros(n))}
    d = out / "campaign=bench-monitor" / "date=2026-11-20"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(table(CAPACITY, cols, n), d / "capacity-00001.parquet")
    print(f"built {n} capacity rows ({len(reads)} snapshots)", flush=True)
    return n


def views(engine) -> dict[str, float]:
    """Seconds per view: every query it runs (the leaderboard's anchors included)."""
    f = q.Filters(window="7d", now=NOW)
    key = ONE
    out = {}
    for name, run in (("options", lambda: q.options(engine)),
                      ("leaderboard", lambda: q.leaderboard(engine, f)),
                      ("leaderboard_by_gpu", lambda: q.leaderboard(engine, f, by_gpu=True)),
                      ("orchestrator", lambda: q.orchestrator_view(engine, f, key)),
                      ("workflows", lambda: [q.groups(engine, f, by) for by in q.GROUP_COLUMNS]),
                      ("capacity", lambda: q.coverage(engine, f)),
                      ("leaderboard_30d_one_model", lambda: q.leaderboard(engine, q.Filters("30d", model="comfyui",
                                                                                             now=NOW))),
                      ("qualified_capacity", lambda: qualified_capacity(
                          engine, q.Filters("7d", model="streamdiffusion", now=NOW))),
                      ("graduation_30_days", lambda: daily(engine, "streamdiffusion", 30, NOW))):
        t = time.perf_counter()
        run()
        out[name] = time.perf_counter() - t
    return out


def timed(engine, repeat: int) -> dict[str, float]:
    runs = [views(engine) for _ in range(repeat)]
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def fetch(client: httpx.Client, path: str) -> float:
    """Seconds for one whole GET (the body read); a non-200 is the benchmark's failure."""
    t = time.perf_counter()
    r = client.get(path)
    took = time.perf_counter() - t
    if r.status_code != 200:
        first = (r.text.splitlines() or [""])[0][:300]
        raise SystemExit(f"GET {path}: {r.status_code}: {first}")
    return took


def http_timings(engine, out: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Per route: its first request (cold) and the median of ``repeat`` more, through the real server."""
    server = DashboardServer(engine, out, port=0, quiet=True, clock=lambda: NOW, rules=RULES, demand=DEMAND).start()
    try:
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
            cold = {name: fetch(client, path) for name, path in ROUTES}
            runs = [{name: fetch(client, path) for name, path in ROUTES} for _ in range(repeat)]
    finally:
        server.close()
    return {name: {"warm_s": round(statistics.median(r[name] for r in runs), 4), "cold_s": round(cold[name], 4)}
            for name, _ in ROUTES}


def report(label: str, timings: dict[str, dict[str, float]]) -> None:
    for name, t in timings.items():
        verdict = "under 1 s" if t["warm_s"] < TARGET_S else "OVER 1 s"
        print(f"{label:11s} {name:36s} {t['warm_s']:8.3f} s  (cold {t['cold_s']:.3f} s)  {verdict}", flush=True)


def clickhouse_engine(out: Path):
    from chdb_http import ChdbHttp

    from fleet.dashboard.engine import ClickHouseEngine
    from fleet.results.clickhouse import ClickHouseSink, ddl
    from fleet.scenario import ClickHouseOut

    front = ChdbHttp().__enter__()
    cfg = ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", database="bench")
    sink = ClickHouseSink(cfg, {"FLEET_CLICKHOUSE_URL": front.url})
    for stmt in ddl("bench", "fleet_"):
        sink.client.command(stmt)
    for kind in ("sessions", "samples", "capacity"):
        for f in sorted(out.glob(f"campaign=*/date=*/{kind}-*.parquet")):
            sink.client.command(f"INSERT INTO bench.fleet_{kind} SELECT * FROM file('{f}', Parquet) "
                                "SETTINGS input_format_null_as_default = 1")
    return ClickHouseEngine(sink), front


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=30_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--snapshot-min", type=float, default=10.0)
    ap.add_argument("--no-clickhouse", action="store_true")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fleet-dash-"))
    t = time.perf_counter()
    build(out, args.sessions, args.samples)
    snapshots = build_capacity(out, args.snapshot_min)
    result = {"capacity_rows": snapshots, "machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.python_implementation()} "
                         f"{platform.python_version()}", "sessions": args.sessions, "samples": args.samples,
              "build_s": round(time.perf_counter() - t, 1)}
    duck = DuckDBEngine(out)
    result["duckdb"] = timed(duck, args.repeat)
    for k, v in result["duckdb"].items():
        print(f"duckdb      {k:28s} {v:8.3f} s", flush=True)
    result["requests"] = {"duckdb": http_timings(duck, out, args.repeat)}
    report("duckdb", result["requests"]["duckdb"])
    if not args.no_clickhouse:
        t = time.perf_counter()
        engine, front = clickhouse_engine(out)
        result["clickhouse_load_s"] = round(time.perf_counter() - t, 1)
        try:
            result["clickhouse"] = timed(engine, args.repeat)
            for k, v in result["clickhouse"].items():
                print(f"clickhouse  {k:28s} {v:8.3f} s  (duckdb/clickhouse {result['duckdb'][k] / v:.2f})", flush=True)
            result["requests"]["clickhouse"] = http_timings(engine, out, args.repeat)
        finally:
            front.__exit__(None, None, None)
        report("clickhouse", result["requests"]["clickhouse"])
    result["over_1s"] = [f"{eng} {name}" for eng, routes in result["requests"].items()
                         for name, t in routes.items() if t["warm_s"] >= TARGET_S]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
