"""cluster.yaml is a valid Ray cluster launcher config with regional worker types."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

from conftest import REPO


def test_cluster_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    regions = {k: [r for r in v["resources"] if r.startswith("region:")] for k, v in types.items()}
    assert regions.pop(config["head_node_type"]) == []  # runners never land on the head
    assert len(regions) >= 2 and all(len(r) == 1 for r in regions.values())
    assert len({r[0] for r in regions.values()}) == len(regions)


def test_every_node_installs_this_checkout_with_its_pinned_dependencies():
    """No hand-kept dependency list to drift from pyproject.toml: the checkout is mounted and installed."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert config["file_mounts"] == {"~/fleet": "."}
    installs = [c for c in config["setup_commands"] if " install " in c and "-U pip" not in c]
    assert installs == ['~/fleet-venv/bin/pip install "$HOME/fleet[charts]"']
    assert 'charts = ["matplotlib' in (REPO / "pyproject.toml").read_text()
