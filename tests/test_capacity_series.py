"""The capacity series (fleet.results.capacity_series): which reads are stored, and how a snapshot becomes
rows of the ``capacity`` table. Expected rows are written out here by hand."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from fleet.capacity import CapacitySnapshot, OrchestratorSlots
from fleet.results.capacity_series import CapacitySeries, capacity_table
from fleet.results.outputs import MemorySink, Outputs
from fleet.results.sink import CAPACITY, SCHEMA_VERSION
from fleet.scenario.policy import CapacitySeriesOut

IDS = {"campaign_id": "c1", "run_id": "c1", "scenario": "s"}
T0 = 1_780_000_000.0


def snap(idle: int, at: float, anonymous: int = 0) -> CapacitySnapshot:
    return CapacitySnapshot(model="sd", source="gateway", read_unix=at, anonymous_idle=anonymous, orchestrators=(
        OrchestratorSlots("0xa", "https://a:8935", idle=idle, in_use=1, gpus=(("g0", "RTX 4090"), ("g1", "RTX 4090")),
                          warm=True, price_per_unit=1200, pixels_per_unit=1),
        OrchestratorSlots("0xb", "https://b:8935", idle=0, in_use=0)))


def test_a_changed_read_is_stored_at_most_every_min_s_and_an_unchanged_one_every_max_s():
    series = CapacitySeries(CapacitySeriesOut(min_s=60, max_s=600), IDS)
    reads = [(0, 3), (10, 3), (30, 2), (70, 2), (80, 1), (130, 1), (700, 1), (1290, 1), (1300, 1)]
    stored = [t for t, idle in reads if series.offer(snap(idle, T0 + t), T0 + t + 0.5) is not None]
    # 0: the first; 10: unchanged; 30: a change, 30 s on (too soon); 70: 2 differs from the stored 3, 70 s on;
    # 80: a change, too soon; 130: 1 differs from the stored 2; 700: unchanged, 570 s on; 1290: unchanged,
    # 1160 s on (past max_s); 1300: unchanged, 10 s on
    assert stored == [0, 70, 130, 1290]
    assert series.stored == 4


def test_a_snapshot_is_one_row_per_orchestrator_and_one_for_slots_of_no_known_orchestrator():
    table = capacity_table(snap(3, T0, anonymous=2), IDS, T0 + 4.25)
    assert table.schema.equals(CAPACITY)
    at = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    common = {**IDS, "schema_version": SCHEMA_VERSION, "read_at": at, "age_s": 4.25, "source": "gateway", "model": "sd"}
    rows = [{k: v for k, v in r.items() if k != "fleet_version"} for r in table.to_pylist()]
    assert rows == [
        {**common, "orchestrator_address": "0xa", "orchestrator_uri": "https://a:8935", "gpu_ids": ["g0", "g1"],
         "gpu_names": ["RTX 4090", "RTX 4090"], "warm": True, "idle": 3, "in_use": 1, "capacity": 4,
         "price_per_unit": 1200, "pixels_per_unit": 1},
        {**common, "orchestrator_address": "0xb", "orchestrator_uri": "https://b:8935", "gpu_ids": [], "gpu_names": [],
         "warm": False, "idle": 0, "in_use": 0, "capacity": 0, "price_per_unit": None, "pixels_per_unit": None},
        {**common, "orchestrator_address": "", "orchestrator_uri": "", "gpu_ids": [], "gpu_names": [], "warm": None,
         "idle": 2, "in_use": 0, "capacity": 2, "price_per_unit": None, "pixels_per_unit": None}]


def test_capacity_rows_go_to_storage_with_the_next_batch_never_to_the_outputs_fed_at_once():
    now, stored = MemorySink(name="now"), MemorySink(name="stored", stored=True)
    outputs = Outputs([now, stored], flush_s=3600)
    outputs.add_table("capacity", capacity_table(snap(3, T0), IDS, T0))
    outputs.add_table("capacity", capacity_table(snap(2, T0 + 60), IDS, T0 + 60))
    outputs.close()
    assert not now.batches
    (batch,) = stored.batches
    assert batch.rows == () and list(batch.tables) == ["capacity"]
    assert batch.tables["capacity"].column("idle").to_pylist() == [3, 0, 2, 0]


def test_min_s_above_max_s_is_refused():
    with pytest.raises(ValueError, match=r"min_s \(700\) must not exceed max_s \(600\)"):
        CapacitySeriesOut(min_s=700, max_s=600)


def test_the_table_is_one_of_the_stored_kinds_with_a_clickhouse_layout():
    from fleet.results.clickhouse import LAYOUT, ddl
    from fleet.results.sink import TABLES

    assert TABLES["capacity"] is CAPACITY and set(LAYOUT) == set(TABLES)
    create = next(s for s in ddl("db", "fleet_") if s.startswith("CREATE TABLE IF NOT EXISTS db.fleet_capacity"))
    assert "PARTITION BY toYYYYMM(read_at)" in create and "ORDER BY (model, orchestrator_uri, read_at)" in create
    assert "`gpu_names` Array(String)" in create and isinstance(CAPACITY.field("read_at").type, pa.TimestampType)


def test_the_dashboards_engine_reads_the_stored_series(tmp_path):
    """DuckDB over the results directory: the capacity table as stored, and an empty one of its schema
    before any campaign stored a snapshot."""
    from fleet.dashboard.engine import DuckDBEngine
    from fleet.results.sink import Batch, ParquetSink

    engine = DuckDBEngine(tmp_path)
    t = engine.tables()["capacity"]
    assert engine.query(f"SELECT count(*) AS n FROM {t}", {}) == [{"n": 0}]
    sink = ParquetSink(tmp_path, "c1", {})
    sink.add(Batch(1, (), {"capacity": capacity_table(snap(3, T0), IDS, T0 + 1)}))
    engine = DuckDBEngine(tmp_path)
    rows = engine.query(f"SELECT orchestrator_uri, idle, capacity FROM {engine.tables()['capacity']} "
                        "WHERE orchestrator_uri <> '' ORDER BY orchestrator_uri", {})
    assert rows == [{"orchestrator_uri": "https://a:8935", "idle": 3, "capacity": 4},
                    {"orchestrator_uri": "https://b:8935", "idle": 0, "capacity": 0}]
