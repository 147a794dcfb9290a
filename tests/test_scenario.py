from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.cli.schema import scenario_schema
from fleet.prompts import resolve_pool
from fleet.scenario import (ArrivalsLoad, FixedDuration, RampLoad, Scenario, StagesLoad, SyntheticMedia,
                            load_scenario)
from conftest import REPO

EXAMPLES = sorted((REPO / "scenarios").glob("*.yaml"))
BASE = Path(__file__).parent / "scenarios" / "base.yaml"


def test_the_examples_cover_what_the_issue_asks():
    names = {p.stem for p in EXAMPLES}
    assert {"smoke", "nightly", "capacity-sweep", "soak"} <= names
    dialects = {load_scenario(p).target.dialect for p in EXAMPLES}
    assert dialects == {"livepeer", "daydream", "byoc", "reference"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_scenarios_validate(path: Path):
    sc = load_scenario(path)
    assert sc.source == path.resolve()
    assert resolve_pool(sc.prompts.sets, sc.base_dir, sc.source), "every example has prompts to send"


def test_defaults_of_a_minimal_scenario():
    sc = load_scenario(BASE)
    assert sc.capacity.max_fraction == 0.05
    assert sc.capacity.max_per_orchestrator == 1
    assert sc.capacity.idle_reserve == 1
    assert isinstance(sc.media, SyntheticMedia) and sc.media.codec == "h264"
    assert sc.workflow.params == {"prompt": "${prompt}"}
    assert sc.placement.regions[0].name == "local"
    assert sc.outputs.report is True and sc.outputs.clickhouse is None
    assert isinstance(sc.load, StagesLoad)
    assert sc.load.session.duration == FixedDuration(dist="fixed", s=30.0)
    assert sc.load.end_s == 10 + 300  # window + session.max_s when campaign_max_s is unset


def test_extends_overrides_key_by_key(tmp_path: Path):
    (tmp_path / "child.yaml").write_text(f"extends: {BASE}\nname: child\ncapacity: {{stagger_s: 5}}\n"
                                         "load: {shape: ramp, start: 0, end: 4, duration_s: 40, step_s: 10}\n")
    sc = load_scenario(tmp_path / "child.yaml")
    assert sc.name == "child"
    assert sc.capacity.stagger_s == 5 and sc.capacity.max_fraction == 0.05
    assert sc.workflow.pipeline == "streamdiffusion"  # from the base
    assert isinstance(sc.load, RampLoad)  # a new shape replaces the base's load whole
    assert [s.concurrency for s in sc.load.stages()] == [0, 1, 3, 4]


def test_extends_chain_of_three(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(BASE.read_text() + "labels: {team: a, tier: x}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nlabels: {tier: y}\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\nname: c\n")
    sc = load_scenario(tmp_path / "c.yaml")
    assert (sc.name, sc.labels) == ("c", {"team": "a", "tier": "y"})


def test_models_are_frozen_and_closed():
    sc = load_scenario(BASE)
    with pytest.raises(ValidationError):
        sc.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Scenario.model_validate({**sc.model_dump(), "surprise": 1})


def test_digest_is_stable_and_sensitive(tmp_path: Path):
    a = load_scenario(BASE)
    (tmp_path / "b.yaml").write_text(BASE.read_text().replace("concurrency: 1", "concurrency: 2"))
    assert a.digest() == load_scenario(BASE).digest()
    assert a.digest() != load_scenario(tmp_path / "b.yaml").digest()


def test_arrivals_and_distributions_parse(tmp_path: Path):
    (tmp_path / "s.yaml").write_text(
        f"extends: {BASE}\nload:\n  shape: arrivals\n  rate_per_min: 3\n  max_concurrency: 2\n  duration_s: 60\n"
        "  session: {duration: {dist: lognormal, median_s: 20, sigma: 0.5}, max_s: 40}\n")
    load = load_scenario(tmp_path / "s.yaml").load
    assert isinstance(load, ArrivalsLoad) and load.process == "poisson" and load.session.max_s == 40


def test_schema_is_json_schema_with_every_section():
    schema = scenario_schema()
    json.dumps(schema)
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"name", "target", "workflow", "prompts", "load"}
    assert {"extends", "capacity", "placement", "checks", "outputs", "media"} <= set(schema["properties"])
    assert schema["$defs"]["CapacityPolicy"]["additionalProperties"] is False
