"""Mergeable distribution summaries: one DDSketch per (region, metric), merged for the campaign.

A DDSketch with relative accuracy ``ALPHA`` answers every quantile q with a value within
``ALPHA`` (1 %) of a value whose rank is exactly q in the data it saw, whatever the data
and however the sketches were merged (Masson, Rim & Lee, VLDB 2019; the ``ddsketch``
package). The summaries cover what per-session rows cannot hold in one number:

- ``g2g_latency_ms``: every output frame's latency sample of every session;
- ``output_fps``: every second's output frame count of every session;
- ``startup_s``: one value per session that started.

A runner sends each finished session's sketches (``session_sketches``), not its per-frame
lists: what crosses Ray is a few hundred bytes a session, whatever its length, and the
driver only merges. Each region's sketches are stored (``summaries`` Parquet table, serialized with the
package's protobuf form) next to the exact per-session rows; campaign-level quantiles
merge them. tests/test_results.py checks the bound against exact percentiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchPb
from ddsketch.pb.proto import DDSketchProto

from fleet.probe.types import ProbeResult
from fleet.results.sink import Batch

__all__ = ["ALPHA", "QUANTILES", "SKETCHED", "Sketches", "session_sketches", "sketch_from_bytes", "sketch_to_bytes"]

ALPHA = 0.01
QUANTILES = (0.5, 0.9, 0.95, 0.99)
SKETCHED = ("g2g_latency_ms", "output_fps", "startup_s")


def sketch_to_bytes(s: DDSketch) -> bytes:
    data: bytes = DDSketchProto.to_proto(s).SerializeToString()  # type: ignore[no-untyped-call]
    return data


def sketch_from_bytes(b: bytes) -> DDSketch:
    sketch: DDSketch = DDSketchProto.from_proto(DDSketchPb.FromString(b))  # type: ignore[no-untyped-call]
    return sketch


def _sketch(values: Iterable[float]) -> DDSketch | None:
    sketch = None
    for v in values:
        if v >= 0:
            sketch = sketch or DDSketch(ALPHA)
            sketch.add(float(v))
    return sketch


def session_sketches(result: ProbeResult) -> dict[str, bytes]:
    """One finished session's values of each sketched metric, serialized: what a runner sends for it."""
    values: dict[str, Iterable[float]] = {
        "g2g_latency_ms": (s[1] for s in result.latency_samples if s[1] is not None),
        "output_fps": (p["fps_out"] for p in result.per_second if p.get("fps_out") is not None),
        "startup_s": () if result.startup_s is None else (result.startup_s,)}
    out = {}
    for metric in SKETCHED:
        sketch = _sketch(values[metric])
        if sketch is not None:
            out[metric] = sketch_to_bytes(sketch)
    return out


class Sketches:
    """Per-region sketches, fed with session rows as they finish (the sketches each row's runner sent)."""

    def __init__(self) -> None:
        self.by_region: dict[tuple[str, str], DDSketch] = {}

    name = "sketches"
    stored = False   # an output of fleet.results.outputs, fed at once

    def add(self, batch: Batch) -> None:
        for row in batch.rows:
            for metric, data in row.sketches.items():
                self.add_sketch(row.region or "", metric, sketch_from_bytes(data))

    def close(self) -> None:
        return None

    def add_sketch(self, region: str, metric: str, sketch: DDSketch) -> None:
        key = (region, metric)
        if key in self.by_region:
            self.by_region[key].merge(sketch)
        else:
            self.by_region[key] = sketch

    def merged(self, metric: str) -> DDSketch | None:
        out = None
        for (_, m), s in sorted(self.by_region.items()):
            if m != metric:
                continue
            if out is None:
                out = DDSketch(ALPHA)
            out.merge(s)
        return out

    @staticmethod
    def quantiles(s: DDSketch | None) -> dict[str, float | None]:
        if s is None or s.count == 0:
            return {f"p{int(q * 100)}": None for q in QUANTILES}
        return {f"p{int(q * 100)}": _round3(s.get_quantile_value(q)) for q in QUANTILES}

    def campaign_quantiles(self) -> dict[str, dict[str, Any]]:
        out = {}
        for metric in SKETCHED:
            s = self.merged(metric)
            out[metric] = {"count": int(s.count) if s else 0, **self.quantiles(s)}
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per (region, metric) for the ``summaries`` table."""
        return [{"region": region, "metric": metric, "count": int(s.count), "relative_accuracy": ALPHA,
                 "sketch": sketch_to_bytes(s), **self.quantiles(s)}
                for (region, metric), s in sorted(self.by_region.items())]


def _round3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
