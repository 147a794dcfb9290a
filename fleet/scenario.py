"""The scenario language: what a workflow owner writes to describe a campaign.

Every section is a closed, frozen model; kinds of things (gateway dialect,
capacity source, media source, load shape, duration distribution) are
``Literal`` discriminators. ``load_scenario`` reads a file, follows
``extends:``, validates, and checks what needs other files (prompt sets,
media files), reporting every problem as ``file:line:col: path: message``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, field_validator, model_validator

from fleet.document import Document, load_document, merge
from fleet.errors import Problem, PromptSetError, ScenarioError
from fleet.metrics import METRICS, parse_aggregate
from fleet.prompts import (PoolEntry, PromptSet, category_problem, find_set, load_prompt_set, set_problem,
                           template_problems)
from fleet.spec import EnvName, Slug, Spec, parse, problem_at

__all__ = [
    "ArrivalsLoad", "CapacityPolicy", "CheckSpec", "Duration", "FileMedia", "Load", "MonitorSpec", "Outputs",
    "Placement",
    "PromptsSpec", "RampLoad", "Scenario", "StagesLoad", "SyntheticMedia", "Target", "Workflow",
    "load_scenario", "MAX_EXTENDS_DEPTH",
]

MAX_EXTENDS_DEPTH = 8
DISCRIMINATORS = ("shape", "source", "dist")  # a child that changes one replaces the base's mapping

Dialect = Literal["livepeer", "daydream", "byoc", "reference"]
GroupBy = Literal["orchestrator", "gpu", "model", "region", "prompt_category"]
Positive = Annotated[float, Field(gt=0)]


# --- target ---------------------------------------------------------------

class GatewayCapacity(Spec):
    """Idle slots from the gateway's ``GET /getNetworkCapabilities``."""

    source: Literal["gateway"]
    refresh_s: Positive = 30.0


class NaapCapacity(Spec):
    """Idle slots from the NaaP API's ``GET /v1/streaming/models``; with ``discover_url``, the
    orchestrators its ``GET /v1/discover/orchestrators`` lists for the model become the targets
    sessions are spread across (each capped by ``max_per_orchestrator``, matched by service URI)."""

    source: Literal["naap"]
    url: str = Field(description="NaaP /v1/streaming/models")
    discover_url: str | None = Field(None, description="NaaP /v1/discover/orchestrators (the model is added as "
                                                       "caps=live-video-to-video/<model>)")
    refresh_s: Positive = 60.0


class StaticCapacity(Spec):
    """A fixed slot count, for gateways that publish none. Orchestrators are unknown, so
    the stagger applies to every start and the per-orchestrator cap cannot be enforced."""

    source: Literal["static"]
    slots: int = Field(ge=1)


CapacitySource = Annotated[Union[GatewayCapacity, NaapCapacity, StaticCapacity], Field(discriminator="source")]


class IceServerRef(Spec):
    """A STUN/TURN server for the testers; a TURN credential is named by environment variable, never written."""

    urls: str = Field(pattern=r"^(stun|stuns|turn|turns):", description="e.g. stun:stun.example.org:3478")
    username_env: EnvName | None = Field(None, description="Environment variable holding the TURN username.")
    credential_env: EnvName | None = Field(None, description="Environment variable holding the TURN credential.")


class IceSpec(Spec):
    servers: tuple[IceServerRef, ...] = Field((), description="STUN/TURN servers the testers use (behind NAT).")
    use_gateway_servers: bool = Field(True, description="Also use the servers a gateway names in its WHIP Link "
                                                         "headers (RFC 9725), learnt from its first answer.")


class Target(Spec):
    dialect: Dialect
    url: str | None = Field(None, description="Gateway base URL for every region without its own entry. "
                                              "Omit with dialect 'reference' to start the local reference gateway.")
    region_urls: dict[str, str] = Field(default_factory=dict, description="Gateway base URL per region.")
    token_env: EnvName | None = Field(None, description="Environment variable holding the gateway token.")
    verify_tls: bool = True
    ice: IceSpec = Field(default_factory=IceSpec)
    capacity: CapacitySource = Field(default_factory=lambda: GatewayCapacity(source="gateway"))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @field_validator("region_urls")
    @classmethod
    def _region_urls(cls, v: dict[str, str]) -> dict[str, str]:
        for region, url in v.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} (region {region}) is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _needs_url(self) -> Target:
        if self.dialect != "reference" and self.url is None and not self.region_urls:
            raise ValueError(f"dialect {self.dialect!r} needs 'url' or 'region_urls' "
                             "(only 'reference' may omit them and run the local reference gateway)")
        return self

    def url_for(self, region: str) -> str | None:
        return self.region_urls.get(region, self.url)


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

class _Encoding(Spec):
    """How the test media is encoded (once per process; sessions send the packets)."""

    width: int = Field(512, ge=64, le=3840, multiple_of=2)
    height: int = Field(512, ge=64, le=2160, multiple_of=2)
    fps: float = Field(30.0, gt=0, le=120)
    codec: Literal["h264", "vp8"] = Field("h264", description="h264 (constrained baseline 42e01f, what go-livepeer "
                                                              "accepts) or vp8 (refused by go-livepeer gateways)")
    gop: int = Field(30, ge=1, le=600, description="Frames between IDR frames; keep it short: go-livepeer cuts "
                                                   "segments only at IDR frames, so the GOP adds to latency.")
    bitrate_kbps: int = Field(1500, ge=50, le=50_000)


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


# --- capacity policy, placement ---------------------------------------------------

class CapacityPolicy(Spec):
    max_fraction: Annotated[float, Field(gt=0, le=1)] = Field(0.05, description="Most of the network's total "
                                                                                "slots the campaign may hold.")
    idle_reserve: int = Field(1, ge=0, description="Idle slots always left free, network-wide.")
    max_per_orchestrator: int = Field(1, ge=1, description="Most concurrent test streams on one orchestrator.")
    stagger_s: Annotated[float, Field(ge=0)] = Field(30.0, description="Least time between two starts on one "
                                                                       "orchestrator.")
    lease_wait_s: Annotated[float, Field(ge=0)] = Field(30.0, description="How long a due session waits for a free "
                                                                          "slot before it is skipped_no_capacity.")
    include: tuple[str, ...] = Field((), description="Only orchestrators whose address or URI contains one of these.")
    exclude: tuple[str, ...] = Field((), description="Never orchestrators whose address or URI contains one of these.")

    @model_validator(mode="after")
    def _disjoint(self) -> CapacityPolicy:
        both = sorted(set(self.include) & set(self.exclude))
        if both:
            raise ValueError(f"{', '.join(both)} is both included and excluded")
        return self


class RegionShare(Spec):
    name: Slug = Field(description="A region resource declared in cluster.yaml.")
    weight: Positive = 1.0
    max_concurrent: int | None = Field(None, ge=1, description="Most concurrent sessions from this region.")


class Placement(Spec):
    regions: tuple[RegionShare, ...] = Field((RegionShare(name="local"),), min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Placement:
        names = [r.name for r in self.regions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"region {', '.join(dup)} is listed more than once")
        return self


# --- checks, outputs -----------------------------------------------------------------

class CheckSpec(Spec):
    metric: Literal[tuple(METRICS)]  # type: ignore[valid-type]
    aggregate: str = "mean"
    op: Literal["<", "<=", ">", ">="]
    threshold: float
    group_by: tuple[GroupBy, ...] = ()
    abort: bool = Field(False, description="Stop the campaign as soon as this check is breached.")
    abort_min_sessions: int = Field(10, ge=1, description="An abort check fires only on a group with at least "
                                                          "this many sessions.")
    abort_after_s: float = Field(30.0, ge=0, description="... and not before the campaign has run this long.")
    name: str | None = None

    @field_validator("aggregate")
    @classmethod
    def _aggregate(cls, v: str) -> str:
        parse_aggregate(v)
        return v

    @model_validator(mode="after")
    def _fits_metric(self) -> CheckSpec:
        kind = METRICS[self.metric].kind
        if kind == "flag" and self.aggregate != "rate":
            raise ValueError(f"{self.metric} is a yes/no flag: use aggregate 'rate' (got {self.aggregate!r})")
        if kind == "number" and self.aggregate == "rate":
            raise ValueError(f"'rate' is for yes/no flags; {self.metric} is a number "
                             "(allowed: mean, min, max, pN)")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a field more than once")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.aggregate}({self.metric}) {self.op} {self.threshold:g}"


class ClickHouseOut(Spec):
    url_env: EnvName
    user_env: EnvName | None = None
    password_env: EnvName | None = None
    database: Slug = "fleet"
    table_prefix: str = Field("fleet_", pattern=r"^[a-z_][a-z0-9_]*$")


class KafkaOut(Spec):
    """Every session, per-second sample and event as a message in the network's event envelope."""

    bootstrap_env: EnvName = Field("FLEET_KAFKA_BOOTSTRAP", description="the variable holding the brokers "
                                                                       "(host:port, comma-separated)")
    topic: str = Field("fleet_stream_tests", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    username_env: EnvName | None = Field(None, description="SASL/PLAIN user (with password_env)")
    password_env: EnvName | None = None
    tls: bool = Field(False, description="SASL_SSL / SSL instead of plain TCP")
    idempotent: bool = Field(True, description="the producer's idempotence (no duplicates from its retries)")
    buffer_messages: int = Field(100_000, ge=100, le=10_000_000, description="messages held while the brokers "
                                                                            "are away; past it new ones are "
                                                                            "dropped and counted")

    @model_validator(mode="after")
    def _credentials_pair(self) -> KafkaOut:
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("give both username_env and password_env, or neither")
        return self


class PrometheusOut(Spec):
    """A Prometheus exposition endpoint on the driver (fleet.results.prometheus names the series)."""

    host: str = Field("127.0.0.1", description="address to bind; 127.0.0.1 unless a scraper elsewhere needs it")
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port (printed at start)")
    linger_s: float = Field(0.0, ge=0, le=600, description="keep the endpoint up this long after the campaign, "
                                                           "so a scraper reads the final counts")


class MonitorSpec(Spec):
    """Continuous probing (``fleet monitor``): every orchestrator the capacity source shows for the
    workflow's model is tested at least every ``every_min`` minutes, least recently tested first,
    within ``daily_budget`` of the network's slot-seconds per day and every cap of ``capacity:``."""

    every_min: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = Field(
        60.0, description="Test each orchestrator x model at least this often (minutes).")
    daily_budget: Annotated[float, Field(gt=0, le=1)] = Field(
        0.05, description="Most of the network's slot-seconds per UTC day the monitor's streams may hold "
                          "(0.05: 5 %), on top of the capacity caps.")
    session_s: Positive = Field(30.0, description="Each probe session's length (seconds); at most "
                                                  "load.session.max_s.")
    flush_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        60.0, description="Parquet and ClickHouse batches at least this often (Kafka and Prometheus get "
                          "each session as it ends).")
    retry_min: Annotated[float, Field(gt=0)] | None = Field(
        None, description="An orchestrator skipped for capacity is tried again after this long (minutes; "
                          "default a quarter of every_min).")


class Outputs(Spec):
    dir: str = "results"
    clickhouse: ClickHouseOut | None = None
    kafka: KafkaOut | None = None
    prometheus: PrometheusOut | None = None
    report: bool = True
    junit: str | None = Field(None, description="Write JUnit XML of the checks here (for CI).")


# --- the scenario -----------------------------------------------------------------

class Scenario(Spec):
    """A test campaign, as a workflow owner writes it."""

    name: Slug
    description: str = ""
    owner: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    extends: str | None = Field(None, description="A base scenario file (relative path) whose values this "
                                                  "one overrides, key by key.")
    target: Target
    workflow: Workflow
    media: Media = Field(default_factory=lambda: SyntheticMedia(source="synthetic"))
    prompts: PromptsSpec
    load: Load
    capacity: CapacityPolicy = Field(default_factory=CapacityPolicy)
    placement: Placement = Field(default_factory=Placement)
    checks: tuple[CheckSpec, ...] = ()
    outputs: Outputs = Field(default_factory=Outputs)
    monitor: MonitorSpec | None = Field(None, description="Continuous probing settings for `fleet monitor`.")

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _daydream_model(self) -> Scenario:
        if self.target.dialect == "daydream" and "model_id" not in self.workflow.params:
            raise ValueError("dialect 'daydream' needs workflow.params.model_id (the Daydream API requires it, "
                             "e.g. stabilityai/sd-turbo)")
        return self

    @model_validator(mode="after")
    def _monitor_session_fits(self) -> Scenario:
        if self.monitor is not None and self.monitor.session_s > self.load.session.max_s:
            raise ValueError(f"monitor.session_s ({self.monitor.session_s:g}) is longer than "
                             f"load.session.max_s ({self.load.session.max_s:g}), the cap on one session")
        return self

    @model_validator(mode="after")
    def _regions_have_urls(self) -> Scenario:
        if self.target.dialect == "reference":
            return self
        missing = [r.name for r in self.placement.regions if self.target.url_for(r.name) is None]
        if missing:
            raise ValueError(f"no gateway URL for region {', '.join(missing)}: set target.url or "
                             f"target.region_urls.{missing[0]}")
        return self

    @property
    def source(self) -> Path | None:
        """The file this scenario was loaded from."""
        return self._source

    @property
    def base_dir(self) -> Path:
        return self._source.parent if self._source else Path.cwd()

    def digest(self) -> str:
        """A short stable hash of the resolved scenario (what actually ran)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def prompt_pool(self) -> list[PoolEntry]:
        """Every prompt the campaign may use, in file order, with its set's weight."""
        pool: list[PoolEntry] = []
        for ref in self.prompts.sets:
            path = find_set(ref.set, self.base_dir)
            if path is None:
                raise ScenarioError([Problem(str(self._source or "?"), 1, 1, "prompts.sets",
                                             set_problem(ref.set, self.base_dir))])
            prompt_set = load_prompt_set(path)
            pool += [PoolEntry(prompt_set.name, ref.weight, p) for p in prompt_set.prompts
                     if not ref.categories or p.category in ref.categories]
        return pool


def _resolve(path: Path, chain: tuple[Path, ...]) -> Document:
    doc = load_document(path, ScenarioError)
    data = doc.data
    if data is None:
        raise ScenarioError([Problem(str(path), 1, 1, "", "the file is empty (a scenario is a mapping)")])
    if not isinstance(data, dict):
        raise ScenarioError([problem_at(doc, (), "a scenario must be a mapping of keys to values")])
    parent = data.get("extends")
    if parent is None:
        return doc
    if not isinstance(parent, str):
        raise ScenarioError([problem_at(doc, ("extends",), "expected a file path (relative to this file)")])
    base_path = (path.parent / parent).resolve()
    if base_path in chain or base_path == path.resolve():
        cycle = " -> ".join(p.name for p in (*chain, path.resolve(), base_path))
        raise ScenarioError([problem_at(doc, ("extends",), f"extends forms a cycle: {cycle}")])
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ScenarioError([problem_at(doc, ("extends",), f"extends is nested deeper than {MAX_EXTENDS_DEPTH}")])
    if not base_path.is_file():
        raise ScenarioError([problem_at(doc, ("extends",), f"base scenario {parent!r} not found "
                                                           "(paths are relative to this file)")])
    return merge(_resolve(base_path, (*chain, path.resolve())), doc, kinds=DISCRIMINATORS)


def _file_problems(doc: Document, base: Path) -> list[Problem]:
    """Checks that need other files (prompt sets and their categories, the media file).

    They read the raw data, so they run, and report, even when the model has other problems.
    """
    problems: list[Problem] = []
    data = doc.data
    sets = ((data.get("prompts") or {}) if isinstance(data.get("prompts"), dict) else {}).get("sets")
    for i, ref in enumerate(sets if isinstance(sets, list) else []):
        if not isinstance(ref, dict) or not isinstance(ref.get("set"), str):
            continue
        here = ("prompts", "sets", i)
        path = find_set(ref["set"], base)
        if path is None:
            problems.append(problem_at(doc, here + ("set",), set_problem(ref["set"], base)))
            continue
        try:
            prompt_set: PromptSet = load_prompt_set(path)
        except PromptSetError as exc:
            problems.append(problem_at(doc, here + ("set",), f"prompt set {ref['set']!r} is invalid: "
                                                             f"{exc.problems[0]}"))
            continue
        categories = ref.get("categories")
        for j, cat in enumerate(categories if isinstance(categories, list) else []):
            msg = category_problem(ref["set"], str(cat), prompt_set)
            if msg:
                problems.append(problem_at(doc, here + ("categories", j), msg))
    media = data.get("media")
    if isinstance(media, dict) and media.get("source") == "file" and isinstance(media.get("path"), str):
        media_path = Path(media["path"])
        if not (media_path if media_path.is_absolute() else base / media_path).is_file():
            problems.append(problem_at(doc, ("media", "path"), f"video file {media['path']!r} not found"))
    return problems


def load_scenario(path: str | Path) -> Scenario:
    """Read, merge (``extends:``) and validate a scenario; raise ScenarioError listing every problem."""
    path = Path(path)
    doc = _resolve(path, ())
    problems = _file_problems(doc, path.resolve().parent)
    try:
        scenario = parse(Scenario, doc, ScenarioError)
    except ScenarioError as exc:
        raise ScenarioError(exc.problems + problems) from None
    if problems:
        raise ScenarioError(problems)
    scenario._source = path.resolve()
    return scenario
