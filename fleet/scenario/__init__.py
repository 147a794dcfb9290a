"""The scenario language: what a workflow owner writes to describe a campaign.

Every section is a closed, frozen model; kinds of things (gateway dialect,
capacity source, media source, load shape, duration distribution) are
``Literal`` discriminators. ``load_scenario`` reads a file, follows
``extends:``, validates, and checks what needs other files (prompt sets,
media files), reporting every problem as ``file:line:col: path: message``.

The sections live in ``target`` (gateway, capacity source, ICE, orchestrators),
``workload`` (workflow, media, prompts, durations, load shapes), ``policy``
(capacity policy, placement, checks, outputs, monitor) and ``model`` (the
scenario and its loading); everything is importable from here.
"""

from fleet.scenario.model import DISCRIMINATORS, MAX_EXTENDS_DEPTH, Scenario, load_scenario
from fleet.scenario.policy import (CapacityPolicy, CheckSpec, ClickHouseOut, KafkaOut, MonitorSpec, Outputs,
                                   Placement, PrometheusOut, RegionShare)
from fleet.scenario.target import (CapacitySource, Dialect, GatewayCapacity, GroupBy, IceServerRef, IceSpec,
                                   NaapCapacity, StaticCapacity, Target)
from fleet.scenario.workload import (ArrivalsLoad, Duration, ExponentialDuration, FileMedia, FixedDuration, Load,
                                     LognormalDuration, Media, PromptSetRef, PromptsSpec, PromptSwitch, RampLoad,
                                     SessionSpec, SessionThresholds, Stage, StagesLoad, SyntheticMedia,
                                     UniformDuration, Workflow)

__all__ = [
    "DISCRIMINATORS", "MAX_EXTENDS_DEPTH", "ArrivalsLoad", "CapacityPolicy", "CapacitySource", "CheckSpec",
    "ClickHouseOut", "Dialect", "Duration", "ExponentialDuration", "FileMedia", "FixedDuration", "GatewayCapacity",
    "GroupBy", "IceServerRef", "IceSpec", "KafkaOut", "Load", "LognormalDuration", "Media", "MonitorSpec",
    "NaapCapacity", "Outputs", "Placement", "PrometheusOut", "PromptSetRef", "PromptSwitch", "PromptsSpec",
    "RampLoad", "RegionShare", "Scenario", "SessionSpec", "SessionThresholds", "Stage", "StagesLoad",
    "StaticCapacity", "SyntheticMedia", "Target", "UniformDuration", "Workflow", "load_scenario",
]
