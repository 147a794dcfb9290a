"""The reference gateway's own health: how late its event loop ran (a loop that ran late stamped frames
late, in the truth too), and a collector kept out of the loop's way. The gateway's own code: the probe
measures its own loop with its own monitor, which the reference does not share."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

__all__ = ["LoopLag", "freeze_gc"]

PERIOD_S = 0.010      # the monitor's wake-up period: a stall longer than this is always seen
RECORD_MS = 1.0       # a late wake-up counts towards the largest lag from this much on

_frozen = False


def freeze_gc() -> None:
    """Move every object alive now out of the cyclic collector's way, once per process: a full collection
    over aiortc, PyAV, numpy and aiohttp would stall the loop ~40 ms, and stamp every frame in flight late."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


class LoopLag:
    """The gateway's loop lateness from ``start`` to ``stop``: each wake-up every ``PERIOD_S`` that comes late by
    ``lag`` means the loop could not look at a socket for that long."""

    def __init__(self) -> None:
        self.ticks = 0
        self.lag_sum_s = 0.0
        self.worst_s = 0.0
        self.t0 = time.monotonic()
        self.cpu0 = time.thread_time()
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self.t0, self.cpu0 = time.monotonic(), time.thread_time()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            lag = max(0.0, loop.time() - due)
            self.ticks += 1
            self.lag_sum_s += lag
            if lag * 1000 >= RECORD_MS:
                self.worst_s = max(self.worst_s, lag)

    def report(self) -> dict[str, float]:
        """Mean and largest lag (ms), and the share of wall time the loop's thread was on the CPU (percent of a
        core; call it on the loop's thread)."""
        wall = time.monotonic() - self.t0
        return {"lag_ms_mean": round(1000 * self.lag_sum_s / self.ticks, 3) if self.ticks else 0.0,
                "lag_ms_max": round(self.worst_s * 1000, 3),
                "busy_pct": round(100 * (time.thread_time() - self.cpu0) / wall, 1) if wall > 0 else 0.0}
