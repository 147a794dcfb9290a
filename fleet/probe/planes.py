"""What the probe's decode windows read of a decoded frame: the mean of each YUV 4:2:0 plane, on a 4x
subsampled grid (every fourth sample of every fourth row: a brightness step or a look's colour moves them
all). Native where ``fleet._rtpnative`` is (``plane_mean``: the same grid, summed exactly), numpy otherwise;
tests/test_planes.py holds the two to the same figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fleet import srtpcalls

__all__ = ["GRID", "frame_means"]

GRID = 4  # every GRID-th sample of every GRID-th row


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
