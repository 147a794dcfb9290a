"""The state one reference-gateway stream keeps, declared once for the parts that share it: the
lifecycle (``stream.Stream``, which sets it all in ``__init__``), the simulated runner
(``runner.RunnerModel``) and the reports (``records.StreamRecords``)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

FPS_WINDOW_S = 10.0            # the runner's fps is counted over this window (ai-runner FPS_LOG_INTERVAL)

if TYPE_CHECKING:
    import random

    from fleet.gateway.config import Fault
    from fleet.gateway.egress import H264Encoder, Output, OutputTrack
    from fleet.gateway.network import Lease
    from fleet.gateway.swaps import SwapLimiter
    from fleet.gateway.stream import StreamHost
    from fleet.gateway.transform import Look
    from fleet.rtp import FrameTap, TapFrame


@dataclass
class Rate:
    """Events per second over a sliding window."""

    window: float = FPS_WINDOW_S
    times: deque[float] = field(default_factory=deque)

    def add(self, t: float) -> None:
        self.times.append(t)
        while self.times and self.times[0] < t - self.window:
            self.times.popleft()

    def fps(self, now: float, since: float) -> float:
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        span = min(self.window, now - since)
        return len(self.times) / span if span > 0.5 else 0.0


class StreamState:
    # who and where
    gw: StreamHost
    loop: asyncio.AbstractEventLoop
    pc: Any
    t0: float
    t0_unix: float
    id: str
    key: str
    name: str
    request_id: str
    pipeline: str
    orchestrator: str                 # the stream's orchestrator= filter (a substring of the service URI)
    include_uris: tuple[str, ...]
    exclude_uris: tuple[str, ...]
    e2e_test: bool
    rng: random.Random
    closed: str | None
    closed_unix: float | None
    # the orchestrator, its faults, the prompt
    lease: Lease | None
    faults: list[Fault]
    lossy: bool
    prompt: str
    look: Look
    lut: Any
    params: dict[str, Any]
    params_hash: str
    params_update: float | None
    prompts: list[tuple[float, str, str]]
    # media in and out
    tap: FrameTap | None
    whep: list[tuple[Any, OutputTrack]]
    encoder: H264Encoder | None
    arrivals: dict[int, float]
    arrival_misses: int
    relay_queue: asyncio.Queue[TapFrame]
    relay_ts0: int | None
    relay_need_key: bool
    first_packet: asyncio.Event
    output: Output | None          # the current orchestrator's output (None before the first job starts)
    output_set: asyncio.Event      # set whenever a new output is made (go-livepeer: OutCond.Broadcast)
    generation: int                # one per orchestrator the stream has had: a swap starts the next
    # the runner
    frames: list[list[Any]]
    unsent: dict[int, int]
    dropped: dict[str, int]
    frames_in: int
    frames_out: int
    in_rate: Rate
    out_rate: Rate
    last_in: float | None
    last_out: float | None
    last_in_pts: float | None
    last_out_pts: float | None
    last_due: float
    media_anchor: float | None
    busy_until: float
    queue_free_at: float
    start_at: float
    runner_start: float | None
    ready_at: float | None
    warmup_left: int
    next_pts: float
    restart_count: int
    restarts: dict[str, int]       # per orchestrator address: its runner's restarts (ai-runner restart_count)
    swaps: SwapLimiter
    swapping: bool
    last_error: tuple[str, float] | None
    last_restart: float | None
    # reports
    events: deque[tuple[float, str, dict[str, Any]]]
    runner_status: dict[str, Any] | None
    gateway_status: dict[str, Any]
    # a BYOC stream's status: one flat map, replaced whole by each runner report (None: the live-video dialect)
    flat_status: dict[str, Any] | None = None
    replaced = False               # a newer stream of the same name took over (go-livepeer registerControl)

    if TYPE_CHECKING:  # defined by Stream and RunnerModel
        def event(self, name: str, **data: Any) -> None: ...
        def fail(self, message: str, trace: str | None = None) -> None: ...
        def error_event(self, message: str) -> None: ...
        def close_soon(self, reason: str) -> None: ...
        def unix(self, t: float | None) -> float | None: ...
        def fps_cap(self) -> float: ...
        def _active(self, kind: str) -> Fault | None: ...
        def _spawn(self, coro: Any) -> None: ...
        def state(self) -> str: ...
        def new_runner(self) -> None: ...
        def swap_soon(self, cause: str) -> None: ...
        async def acquire(self, avoid: str = "") -> Lease | None: ...
        async def start_job(self, lease: Lease) -> None: ...
