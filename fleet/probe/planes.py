"""What the probe's decode windows read of a decoded frame: the mean of each YUV 4:2:0 plane, on a 4x
subsampled grid (every fourth sample of every fourth row: a brightness step or a look's colour moves them
all). Native where ``fleet._rtpnative`` is (``plane_mean``: the same grid, summed exactly), numpy otherwise;
tests/test_planes.py holds the two to the same figures. And when a prompt switch's effect shows in the
chroma means read (``effect_start``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from fleet import srtpcalls

__all__ = ["EFFECT_DELTA", "EFFECT_FRAMES", "GRID", "effect_start", "frame_means"]

GRID = 4  # every GRID-th sample of every GRID-th row
EFFECT_DELTA = 3.0            # mean U or V moving this much is a visible look change
EFFECT_FRAMES = 3             # ... for this many decoded frames in a row


def frame_means(frame: Any) -> tuple[float, float, float]:
    """Mean Y, U and V of a decoded YUV 4:2:0 frame (an ``av.VideoFrame``) on the ``GRID`` grid."""
    planes = frame.planes[0], frame.planes[1], frame.planes[2]
    mean = srtpcalls.native_plane_mean()
    if mean is not None:
        y, u, v = (mean(p, p.width, p.height, p.line_size, GRID) for p in planes)
    else:
        y, u, v = (_mean(p) for p in planes)
    return y, u, v


def _mean(plane: Any) -> float:
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
    return float(rows[:plane.height:GRID, :plane.width:GRID].mean())


def effect_start(chroma: Sequence[tuple[float, float, float]], t_req: float, before_s: float) -> float | None:
    """The arrival of the first of ``EFFECT_FRAMES`` frames in a row after ``t_req`` whose mean U or V
    moved more than ``EFFECT_DELTA`` from the ``before_s`` seconds before it; None while not (yet) seen."""
    before = [(u, v) for a, u, v in chroma if t_req - before_s <= a < t_req]
    after = [(a, u, v) for a, u, v in chroma if a >= t_req]
    if not before or len(after) < EFFECT_FRAMES:
        return None
    bu = statistics.fmean(u for u, _ in before)
    bv = statistics.fmean(v for _, v in before)
    run = 0
    for j, (_, u, v) in enumerate(after):
        run = run + 1 if max(abs(u - bu), abs(v - bv)) > EFFECT_DELTA else 0
        if run == EFFECT_FRAMES:
            return after[j - EFFECT_FRAMES + 1][0]
    return None
