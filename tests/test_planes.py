"""A decoded frame's plane means (fleet.probe.planes), native and numpy, against the means of the samples the
frame was made of, read off the source array on the same grid by plain Python."""

from __future__ import annotations

import statistics

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet import srtpcalls
from fleet.probe.planes import GRID, frame_means

needs_native = pytest.mark.skipif(srtpcalls.NATIVE_UNUSABLE is not None, reason=str(srtpcalls.NATIVE_UNUSABLE))


def truth(source: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """The means on the grid, of the yuv420p array a frame was made from (Y rows, then U, then V)."""
    rows = source.tolist()
    y = rows[:height]
    chroma = [b for r in rows[height:] for b in r]
    size = (height // 2) * (width // 2)
    u = [chroma[k * (width // 2):(k + 1) * (width // 2)] for k in range(height // 2)]
    v = [chroma[size + k * (width // 2):size + (k + 1) * (width // 2)] for k in range(height // 2)]

    def grid(plane: list[list[int]]) -> float:
        return statistics.fmean(s for r in plane[::GRID] for s in r[::GRID])
    return grid(y), grid(u), grid(v)


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False], ids=["native", "numpy"])
@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 40).map(lambda k: 2 * k), height=st.integers(1, 20).map(lambda k: 4 * k),
       seed=st.integers(0, 2**32 - 1), flat=st.booleans())
def test_the_plane_means_are_the_grids_means(native: bool, width: int, height: int, seed: int, flat: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = (height * 3 // 2, width)
    source = np.full(shape, 255, np.uint8) if flat else rng.integers(0, 256, shape, np.uint8)
    frame = av.VideoFrame.from_ndarray(source, format="yuv420p")  # rows padded, often: the grid skips the padding
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_RTP_NATIVE", "1" if native else "0")
        assert (srtpcalls.native_plane_mean() is not None) == native
        means = frame_means(frame)
        patch.setenv("FLEET_RTP_NATIVE", "0")
        assert means == frame_means(frame)  # the same figures on either path
    assert means == pytest.approx(truth(source, width, height), abs=1e-9)


@needs_native
@pytest.mark.parametrize("args", [(4, 4, 4, 1), (4, 2, 4, 1), (3, 1, 2, 1), (2, 2, 2, 0), (0, 1, 1, 1), (-1, 1, 1, 1),
                                  (1, -2, 1, 1), (2, 1, -1, 1), (2, 2, 2, -3)],
                         ids=["too many rows", "too wide a last row", "rows shorter than wide", "no step", "no width",
                              "a negative width", "a negative height", "a negative row", "a negative step"])
def test_a_plane_smaller_than_its_sizes_is_refused(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="plane_mean"):
        srtpcalls._rtpnative.plane_mean(bytes(7), *args)


@needs_native
def test_a_step_past_the_plane_reads_its_first_sample_alone() -> None:
    assert srtpcalls._rtpnative.plane_mean(bytes([5, 6, 7, 8]), 2, 2, 2, 2**62) == 5.0
