"""The reference gateway's stand-in for an AI image-to-image model.

A prompt maps to a deterministic *look*: a luma gain and offset, a posterise
step and a chroma shift. Applied to a yuv420p frame it changes every pixel
(the chroma shift is never zero) while keeping the frame's timing and its
coarse brightness order (the luma curve is increasing), which is what a
tester's latency method may rely on. A prompt also has a *cost* in [0, 1],
growing with its length, that lowers the GPU's output fps cap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import av
import numpy as np

__all__ = ["Look", "apply_look", "look_for", "prompt_cost"]

COST_FULL_AT_CHARS = 2000  # a prompt this long costs the full prompt_cost of the GPU


@dataclass(frozen=True)
class Look:
    gain: float      # luma gain, > 0
    offset: float    # luma offset
    step: int        # posterise step for luma (levels = 256 / step)
    du: int          # chroma shifts, |du|, |dv| >= 16
    dv: int

    def lut(self) -> np.ndarray:
        y = np.arange(256, dtype=np.float64)
        graded = np.clip(self.gain * y + self.offset, 0, 255)
        return (np.floor(graded / self.step) * self.step + self.step // 2).clip(0, 255).astype(np.uint8)


def look_for(prompt: str) -> Look:
    h = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    gain = 0.75 + h[0] / 255 * 0.5
    offset = (h[1] / 255 - 0.5) * 40
    step = (8, 16, 32)[h[2] % 3]
    du = (16 + h[3] % 48) * (1 if h[4] & 1 else -1)
    dv = (16 + h[5] % 48) * (1 if h[6] & 1 else -1)
    return Look(gain, offset, step, du, dv)


def prompt_cost(prompt: str) -> float:
    return min(1.0, len(prompt) / COST_FULL_AT_CHARS)


def apply_look(frame: av.VideoFrame, look: Look, lut: np.ndarray, black: bool = False) -> av.VideoFrame:
    """A new frame with ``look`` applied; ``black`` gives a black frame (a fault) with the same timing."""
    img = frame.to_ndarray(format="yuv420p")
    h = frame.height
    if black:
        img[:h] = 16
        img[h:] = 128
    else:
        img[:h] = lut[img[:h]]
        uv = img[h:].astype(np.int16)
        quarter = uv.shape[0] // 2
        uv[:quarter] += look.du
        uv[quarter:] += look.dv
        img[h:] = np.clip(uv, 0, 255).astype(np.uint8)
    out = av.VideoFrame.from_ndarray(img, format="yuv420p")
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out
