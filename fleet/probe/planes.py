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
    h, w = frame.height, frame.width
    y, u, v = frame.planes[0], frame.planes[1], frame.planes[2]
    mean = srtpcalls.native_plane_mean()
    if mean is not None:
        return (mean(y, w, h, y.line_size, GRID), mean(u, w // 2, h // 2, u.line_size, GRID),
                mean(v, w // 2, h // 2, v.line_size, GRID))
    return _mean(y, w, h), _mean(u, w // 2, h // 2), _mean(v, w // 2, h // 2)


def _mean(plane: Any, width: int, height: int) -> float:
    samples = np.frombuffer(memoryview(plane), np.uint8).reshape(height, plane.line_size)[::GRID, :width:GRID]
    return float(samples.mean())
