"""What each session does: the workflow (pipeline, model, thresholds), the media it sends, the
prompts it switches through, how long it lasts, and the load shape that starts sessions."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from fleet.prompts import (template_problems)
from fleet.spec import Slug, Spec
from fleet.scenario.target import Positive

# --- workflow ---------------------------------------------------------------

class SessionThresholds(Spec):
    """Per-session thresholds: a session meeting all of them counts toward goodput."""

    max_startup_s: Positive = 10.0
    min_output_fps: Annotated[float, Field(ge=0)] = 12.0
    max_g2g_latency_ms: Positive = 3000.0
    max_jitter_coeff: Positive = 0.1
    max_freeze_s: Annotated[float, Field(ge=0)] = 2.0


class Workflow(Spec):
    pipeline: str = Field(min_length=1, description="Pipeline / model id, e.g. streamdiffusion-sdxl.")
    params: dict[str, Any] = Field(default_factory=lambda: {"prompt": "${prompt}"},
                                   description="Params template; ${prompt}, ${negative_prompt}, ${prompt_id}, "
                                               "${category} and ${seed} are filled per session.")
    thresholds: SessionThresholds = Field(default_factory=SessionThresholds)

    @field_validator("params")
    @classmethod
    def _template(cls, v: dict[str, Any]) -> dict[str, Any]:
        problems = template_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v


# --- media -----------------------------------------------------------------

RUNNER_MAX_FPS = 24.0   # ai-runner trickle/decoder.py MAX_FRAMERATE

class _Encoding(Spec):
    """How the test media is encoded (once per process; sessions send the packets) and when it is sent."""

    width: int = Field(512, ge=64, le=3840, multiple_of=2)
    height: int = Field(512, ge=64, le=2160, multiple_of=2)
    fps: float = Field(20.0, gt=0, le=120, description=(
        "Frames per second sent. ai-runner takes at most 24 a second by timestamp (trickle/decoder.py "
        "MAX_FRAMERATE) and drops the rest: 30 fps comes out as an uneven 24 (4 of every 5 frames, a jitter "
        "coefficient near 0.35 that the probe reports as it is), and exactly 24 loses a frame now and then to "
        "rounding. 20 passes whole."))
    codec: Literal["h264", "vp8"] = Field("h264", description="h264 (constrained baseline 42e01f, what go-livepeer "
                                                              "accepts) or vp8 (refused by go-livepeer gateways)")
    gop: int = Field(30, ge=1, le=600, description="Frames between IDR frames; keep it short: go-livepeer cuts "
                                                   "segments only at IDR frames, so the GOP adds to latency.")
    bitrate_kbps: int = Field(1500, ge=50, le=50_000)
    send_phases: int = Field(4, ge=0, le=32, description=(
        "The runner's sessions send their frames at this many instants a frame period, shared: its loop wakes "
        "for the sessions at an instant together (8 to 10 % less CPU at 4 than at 0 with 50 sessions on a bench "
        "core; near the core's limit little, or a loss in the sessions' start-up), and a session's first frame "
        "waits for the next instant. "
        "0: every session at a phase of its own, as independent users send (no bursts of the runner's frames "
        "on its uplink, nor at a GPU that serves two of its sessions)."))

    def notes(self) -> list[str]:
        """What a valid choice will do on the network that its author may not expect."""
        if self.fps > RUNNER_MAX_FPS:
            return [f"media.fps {self.fps:g} is above the {RUNNER_MAX_FPS:g} frames a second ai-runner takes (by "
                    "timestamp): the rest are dropped unevenly and the output's jitter shows it "
                    "(30 fps: a coefficient near 0.35)"]
        return []


class SyntheticMedia(_Encoding):
    source: Literal["synthetic"]
    pattern: Literal["bars", "gradient", "moving-box", "noise"] = "moving-box"
    loop_s: Positive = 10.0


class FileMedia(_Encoding):
    source: Literal["file"]
    path: str = Field(description="Video file, relative to the scenario file.")
    loop: bool = True


Media = Annotated[Union[SyntheticMedia, FileMedia], Field(discriminator="source")]


# --- prompts -----------------------------------------------------------------

class PromptSetRef(Spec):
    set: str = Field(description="A set name from prompts/ or a path to a .yaml file.")
    categories: tuple[Slug, ...] = Field((), description="Only these categories; empty means all.")
    weight: Positive = 1.0


class PromptSwitch(Spec):
    every_s: Positive | None = None
    at_s: tuple[Positive, ...] = ()

    @model_validator(mode="after")
    def _one(self) -> PromptSwitch:
        if (self.every_s is None) == (not self.at_s):
            raise ValueError("give exactly one of 'every_s' or 'at_s'")
        if list(self.at_s) != sorted(set(self.at_s)):
            raise ValueError("'at_s' must be strictly increasing")
        return self


class PromptsSpec(Spec):
    sets: tuple[PromptSetRef, ...] = Field(min_length=1)
    selection: Literal["round_robin", "random", "weighted"] = "round_robin"
    switch: PromptSwitch | None = None


# --- load ------------------------------------------------------------------------

class FixedDuration(Spec):
    dist: Literal["fixed"]
    s: Positive


class UniformDuration(Spec):
    dist: Literal["uniform"]
    min_s: Positive
    max_s: Positive

    @model_validator(mode="after")
    def _order(self) -> UniformDuration:
        if self.min_s > self.max_s:
            raise ValueError(f"min_s ({self.min_s:g}) is greater than max_s ({self.max_s:g})")
        return self


class ExponentialDuration(Spec):
    dist: Literal["exponential"]
    mean_s: Positive


class LognormalDuration(Spec):
    dist: Literal["lognormal"]
    median_s: Positive
    sigma: Annotated[float, Field(gt=0, le=3)]


Duration = Annotated[Union[FixedDuration, UniformDuration, ExponentialDuration, LognormalDuration],
                     Field(discriminator="dist")]


class SessionSpec(Spec):
    duration: Duration = Field(default_factory=lambda: FixedDuration(dist="fixed", s=30.0),
                               description="A number of seconds, or a distribution.")
    max_s: Positive = Field(300.0, description="Hard cap on one session's length.")
    min_s: Positive = Field(5.0, description="A session that would be shorter (campaign end) is not started.")

    @field_validator("duration", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return {"dist": "fixed", "s": v} if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _caps(self) -> SessionSpec:
        d = self.duration
        longest = d.s if isinstance(d, FixedDuration) else d.min_s if isinstance(d, UniformDuration) else None
        if longest is not None and longest > self.max_s:
            raise ValueError(f"duration ({longest:g} s) is longer than the hard cap max_s ({self.max_s:g} s)")
        if self.min_s > self.max_s:
            raise ValueError(f"min_s ({self.min_s:g}) is greater than max_s ({self.max_s:g})")
        return self


class _LoadBase(Spec):
    session: SessionSpec = Field(default_factory=SessionSpec)
    campaign_max_s: Positive | None = Field(None, description="Hard cap on the whole campaign; every session "
                                                              "ends by then. Default: start window + session.max_s.")

    @property
    def window_s(self) -> float:
        raise NotImplementedError

    @property
    def end_s(self) -> float:
        return self.campaign_max_s if self.campaign_max_s is not None else self.window_s + self.session.max_s


class Stage(Spec):
    concurrency: int = Field(ge=0, le=10_000)
    duration_s: Positive


class StagesLoad(_LoadBase):
    """Closed loop: hold each stage's number of concurrent sessions for its duration."""

    shape: Literal["stages"]
    stages: tuple[Stage, ...] = Field(min_length=1)

    @property
    def window_s(self) -> float:
        return sum(s.duration_s for s in self.stages)


class RampLoad(_LoadBase):
    """Closed loop: concurrency moves linearly from ``start`` to ``end`` in steps."""

    shape: Literal["ramp"]
    start: int = Field(ge=0, le=10_000)
    end: int = Field(ge=0, le=10_000)
    duration_s: Positive
    step_s: Positive = 10.0

    @property
    def window_s(self) -> float:
        return self.duration_s

    def stages(self) -> list[Stage]:
        n = max(1, math.ceil(self.duration_s / self.step_s))
        out = []
        for i in range(n):
            level = self.start + (self.end - self.start) * (i / (n - 1) if n > 1 else 1.0)
            length = min(self.step_s, self.duration_s - i * self.step_s)
            out.append(Stage(concurrency=round(level), duration_s=length))
        return out


class ArrivalsLoad(_LoadBase):
    """Open loop: sessions arrive at a rate whatever the others are doing, up to a concurrency cap."""

    shape: Literal["arrivals"]
    process: Literal["poisson", "constant"] = "poisson"
    rate_per_min: Annotated[float, Field(gt=0, le=6000)]
    max_concurrency: int = Field(ge=1, le=10_000)
    duration_s: Positive
    max_wait_s: Annotated[float, Field(ge=0)] = Field(0.0, description="How long an arrival may wait for a slot "
                                                                       "before it is skipped.")

    @property
    def window_s(self) -> float:
        return self.duration_s


Load = Annotated[Union[StagesLoad, RampLoad, ArrivalsLoad], Field(discriminator="shape")]
