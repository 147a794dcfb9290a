"""How a scenario treats the network and reports: the capacity policy and placement, the checks a
campaign is judged by, the outputs it feeds, and the continuous monitor's settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fleet.metrics import METRICS, parse_aggregate
from fleet.spec import EnvName, Slug, Spec
from fleet.scenario.target import GroupBy, Positive

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
    start_timeout_s: float = Field(120.0, gt=0, le=3600, description=(
        "How long the region runners may take to start (a node of an autoscaling cluster to come up, the "
        "clip to encode); a region that no node offers fails the run after it."))

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
    workflow's model is tested at least every ``every_min`` minutes, unproven ones (fewer than
    ``proven_sessions`` counted sessions) first, then least recently tested first, within
    ``daily_budget`` of the network's slot-seconds per day and every cap of ``capacity:``."""

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
    proven_sessions: Annotated[int, Field(ge=0, le=100_000)] = Field(
        10, description="An orchestrator is unproven until it has this many counted sessions (as the SLA "
                        "counts them) over the last proven_days; of the due ones, the unproven are tested "
                        "first (0: no such priority). 10 is the qualified-capacity and graduation default.")
    proven_days: Annotated[int, Field(ge=1, le=90)] = Field(
        7, description="The days of stored results (UTC, today included) that count towards proven_sessions.")


class CapacitySeriesOut(Spec):
    """The capacity snapshots the run read, stored as the ``capacity`` table: a read that differs from the
    last one stored, at most every ``min_s``; an unchanged one every ``max_s``."""

    min_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        60.0, description="Least time between two stored snapshots (seconds).")
    max_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        600.0, description="A snapshot is stored at least this often, changed or not (seconds).")

    @model_validator(mode="after")
    def _ordered(self) -> CapacitySeriesOut:
        if self.min_s > self.max_s:
            raise ValueError(f"min_s ({self.min_s:g}) must not exceed max_s ({self.max_s:g})")
        return self


class Outputs(Spec):
    dir: str = "results"
    capacity_series: CapacitySeriesOut = Field(default_factory=CapacitySeriesOut)
    clickhouse: ClickHouseOut | None = None
    kafka: KafkaOut | None = None
    prometheus: PrometheusOut | None = None
    report: bool = True
    junit: str | None = Field(None, description="Write JUnit XML of the checks here (for CI).")
