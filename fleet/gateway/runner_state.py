"""The AI runner's pipeline state, as ai-runner computes it.

Read from livepeer/ai-runner ``runner/src/runner/live/process/process_guardian.py``
(``_compute_current_state``) and ``status.py`` (``PipelineState``,
``status_report_interval = 10``); re-expressed here, not copied. Pure: the
reference gateway's stream feeds it times and rates, a test feeds it numbers. With it, the other
pure rules of the runner: its fps over a window (``Rate``) and its decoder's input cap (``max_framerate``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["COMFYUI_RELOAD_ERROR_S", "LOADING_TIMEOUT_S", "MAX_FRAMERATE", "RELOAD_ERROR_S", "Rate", "RunnerClock",
           "max_framerate", "runner_state"]

LOADING_TIMEOUT_S = 180.0       # loading longer than this: ERROR
INPUT_SHUTDOWN_S = 60.0         # no input this long: the streamer is told to stop (DEGRADED_INPUT)
INPUT_ERROR_S = 90.0            # ... and if it has not stopped by then: ERROR
OFFLINE_GRACE_S = 3.0           # a stopped stream reads DEGRADED_INPUT this long, then OFFLINE
RECENT_ERROR_S = 15.0
RECENT_RESTART_S = 60.0
STALL_ERROR_S = 5.0             # output stalled this long while input flows: ERROR
RELOAD_ERROR_S = 10.0           # no output this long after a (re)load with input: ERROR
COMFYUI_RELOAD_ERROR_S = 30.0   # ... for the comfyui pipeline (process_guardian.py error_threshold)
DEGRADED_INPUT_FPS = 15.0
NO_DATA_S = 2.0


@dataclass
class RunnerClock:
    """What the state rules read, in seconds on one clock (``None``: never happened)."""

    now: float
    start: float
    ready: float | None             # when the pipeline finished loading
    running: bool                   # the stream is running (not stopped)
    last_input: float | None
    last_output: float | None
    params_update: float | None
    last_error: float | None
    last_restart: float | None
    input_fps: float
    output_fps: float
    errored: bool = False           # ERROR is permanent
    reload_error_s: float = RELOAD_ERROR_S


def runner_state(c: RunnerClock) -> str:
    if c.errored:
        return "ERROR"
    since_input = c.now - (c.last_input if c.last_input is not None else c.start)
    since_output = c.now - (c.last_output if c.last_output is not None else 0.0)
    load = max(c.params_update or 0.0, c.ready or 0.0, c.start)
    since_load = max(0.0, c.now - load - 2.0)  # ai-runner's 2 s of slack against timestamp races
    if c.ready is None:
        return "ERROR" if since_load > LOADING_TIMEOUT_S else "LOADING"
    if not c.running:
        offline = since_input > OFFLINE_GRACE_S or c.last_input is None
        return "OFFLINE" if offline else "DEGRADED_INPUT"
    if since_input > INPUT_SHUTDOWN_S:
        return "DEGRADED_INPUT" if since_input < INPUT_ERROR_S else "ERROR"
    if not since_output < since_load:  # no output since the last (re)load
        if since_load < NO_DATA_S:
            return "ONLINE"
        if since_input > since_load:
            return "DEGRADED_INPUT"
        return "DEGRADED_INFERENCE" if since_load < c.reload_error_s else "ERROR"
    if since_output > since_input + 1 and since_output > STALL_ERROR_S:
        return "ERROR"
    if (c.last_error or 0.0) > c.now - RECENT_ERROR_S or (c.last_restart or 0.0) > c.now - RECENT_RESTART_S:
        return "DEGRADED_INFERENCE"
    if since_input > NO_DATA_S or c.input_fps < DEGRADED_INPUT_FPS:
        return "DEGRADED_INPUT"
    if since_output > NO_DATA_S or c.output_fps < min(10.0, 0.8 * c.input_fps):
        return "DEGRADED_INFERENCE"
    return "ONLINE"


FPS_WINDOW_S = 10.0            # the runner's fps is counted over this window (ai-runner FPS_LOG_INTERVAL)
MAX_FRAMERATE = 24.0           # ai-runner trickle/decoder.py: input frames closer than 1/24 s in media time are dropped


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


def max_framerate(next_pts: float, t: float, fps: float = MAX_FRAMERATE) -> tuple[bool, float]:
    """ai-runner's input cap (trickle/decoder.py): (drop the frame at media time ``t``, the next slot).
    A frame before the slot is dropped; one on time moves the slot a frame on from the slot (some jitter
    allowed); one more than a frame late moves it a frame on from itself."""
    step = 1.0 / fps
    if t < next_pts:
        return True, next_pts
    return False, (t + step if t > next_pts + step else next_pts + step)
