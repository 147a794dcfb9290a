"""The tester's own noise: how late its event loop ran, and how busy its thread was.

An output frame timed when the event loop handles its last packet is stamped
late by a loop that was busy elsewhere: that is the tester's jitter, not the
network's. (The probe's own receive path times frames by when their packet
reached the socket instead, ``fleet.sockstamp``: only the frames the loop
stamped itself, on aiortc's path or on another platform, can be late.) One
``LoopMonitor`` per event loop (shared by all the sessions on it) wakes
every ``PERIOD_S``; a wake-up that comes late by
``lag`` means the loop could not look at a socket for that long. A session
asks for the windows in which the loop was late by at least ``SUSPECT_MS``
(``suspect_windows``): a frame stamped inside one may have arrived up to that
much earlier, so its interval is left out of the jitter figure and counted
instead. ``since(mark)`` gives the mean and largest lag over a session and the
share of wall time the loop's thread spent on the CPU (above ~90 % the tester
itself is the bottleneck).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopMonitor", "LagMark", "LagStats", "PERIOD_S", "SUSPECT_MS", "quiet_gc"]

PERIOD_S = 0.010      # the monitor's wake-up period: a stall longer than this is always seen
RECORD_MS = 1.0       # late wake-ups of at least this much are kept (with their time) for suspect windows
SUSPECT_MS = 2.0      # a frame stamped within a stall this long may be that much late: its intervals are suspect
EVENTS_KEPT = 200_000  # late wake-ups remembered (about an hour of a badly loaded loop)

_frozen = False


def quiet_gc() -> None:
    """Move every object alive now (modules, the encoded clip, aiortc's tables) out of the cyclic
    collector's way, once per process. Left in, each full collection walks them all: about 40 ms with
    aiortc, PyAV, numpy and aiohttp loaded, a stall that stamps every frame in flight late. Objects are
    still freed by reference counting; only cycles among them are no longer collected."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMonitor] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LagMark:
    t: float           # time.monotonic()
    ticks: int
    lag_sum_s: float
    thread_cpu_s: float


@dataclass(frozen=True)
class LagStats:
    mean_ms: float
    max_ms: float
    busy_pct: float    # the loop thread's CPU time over wall time, percent of one core


class LoopMonitor:
    """Measures one event loop's lateness while any session uses it (``acquire`` / ``release``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ticks = 0
        self.lag_sum_s = 0.0
        self.events: deque[tuple[float, float]] = deque(maxlen=EVENTS_KEPT)  # (woke at, lag s), in time order
        self.users = 0
        self._task: asyncio.Task[Any] | None = None

    @classmethod
    def for_running_loop(cls) -> LoopMonitor:
        loop = asyncio.get_running_loop()
        monitor = _monitors.get(loop)
        if monitor is None:
            monitor = _monitors[loop] = cls(loop)
        return monitor

    def acquire(self) -> LagMark:
        self.users += 1
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run())
        return self.mark()

    def release(self) -> None:
        self.users = max(0, self.users - 1)
        if self.users == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            # the lag on the loop's own clock, the one its timers keep (uvloop, the loop Ray runs async actors
            # on, counts whole milliseconds: its lag is too); when it woke on time.monotonic(), as marks and
            # frame stamps are (asyncio's loop clock is that one)
            due = self.loop.time() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            lag = max(0.0, self.loop.time() - due)
            woke = time.monotonic()
            self.ticks += 1
            self.lag_sum_s += lag
            if lag * 1000 >= RECORD_MS:
                self.events.append((woke, lag))

    def mark(self) -> LagMark:
        """Now, for ``since`` (call it on the loop's thread: it reads that thread's CPU time)."""
        return LagMark(time.monotonic(), self.ticks, self.lag_sum_s, time.thread_time())

    def since(self, mark: LagMark) -> LagStats:
        now = self.mark()
        ticks = now.ticks - mark.ticks
        wall = now.t - mark.t
        worst = max((lag for woke, lag in self.events if woke >= mark.t), default=0.0)
        return LagStats(mean_ms=round(1000 * (now.lag_sum_s - mark.lag_sum_s) / ticks, 3) if ticks else 0.0,
                        max_ms=round(worst * 1000, 3),
                        busy_pct=round(100 * (now.thread_cpu_s - mark.thread_cpu_s) / wall, 1) if wall > 0 else 0.0)

    def suspect_windows(self, start: float, end: float, min_ms: float = SUSPECT_MS) -> list[tuple[float, float]]:
        """(from, to) spans between ``start`` and ``end`` in which the loop was stalled at least ``min_ms``;
        a stamp up to one period after a stall's end is still inside it (the loop was catching up)."""
        return [(woke - lag, woke + PERIOD_S) for woke, lag in self.events
                if start - PERIOD_S <= woke <= end + lag + PERIOD_S and lag * 1000 >= min_ms]
