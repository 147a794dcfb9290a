"""The invalid-scenario corpus: each file ends with '# expect: LINE:COL: path: message'."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import ScenarioError
from fleet.scenario import load_scenario

INVALID = Path(__file__).parent / "scenarios" / "invalid"
CASES = sorted(INVALID.glob("*.yaml"))


def expected(path: Path) -> str:
    last = path.read_text(encoding="utf-8").rstrip("\n").splitlines()[-1]
    assert last.startswith("# expect: "), f"{path.name} has no '# expect:' line"
    return last.removeprefix("# expect: ")


def test_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_scenario_reports_exact_line(path: Path, cli):
    rel = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    result = cli("validate", rel)
    assert result.code == 1
    assert result.out == ""
    assert result.err.splitlines() == [f"{rel}:{expected(path)}"]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path):
    bad = tmp_path / "many.yaml"
    bad.write_text("name: Many\n"
                   "target: {dialect: nope}\n"
                   "workflow: {pipeline: x}\n"
                   "prompts: {sets: [{set: bootstrp}]}\n"
                   "load: {shape: stages, stages: [{concurrency: -1, duration_s: 0}]}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    lines = str(info.value).splitlines()
    paths = [line.split(": ")[1] for line in lines]
    assert paths == ["name", "target.dialect", "prompts.sets[0].set", "load.stages[0].concurrency",
                     "load.stages[0].duration_s"]
    assert all(line.startswith(f"{bad}:") for line in lines)


def test_error_in_a_base_file_points_into_the_base(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("media: {source: synthetic, fps: 0}\n")
    child = tmp_path / "child.yaml"
    child.write_text((Path(__file__).parent / "scenarios" / "base.yaml").read_text()
                     + "extends: base.yaml\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(child)
    assert str(info.value) == f"{tmp_path / 'base.yaml'}:1:33: media.fps: must be greater than 0, got 0"


@pytest.mark.parametrize(("name", "text", "why"), [
    ("set.yaml", "set: mine\nprompts: [{id: a, text: a fox}]\n", "it is a prompt set (name it under prompts.sets)"),
    ("other.yaml", "orchestrators: 4\nslots: 2\n", "none of its keys (orchestrators, slots) is a scenario's"),
    ("list.yaml", "- a\n- b\n", "a scenario must be a mapping of keys to values"),
    ("empty.yaml", "", "the file is empty (a scenario is a mapping)")])
def test_extends_naming_a_file_that_is_no_scenario_is_the_error_of_the_line_that_names_it(tmp_path: Path, name,
                                                                                           text, why):
    (tmp_path / name).write_text(text)
    child = tmp_path / "child.yaml"
    child.write_text("name: child\nextends: " + name + "\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(child)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{child}:2:10: extends: '{name}' is not a scenario: " + why), line


def test_a_base_scenario_that_is_not_valid_yaml_is_its_own_error_naming_the_line_that_extends_it(tmp_path: Path):
    """The mistake is in the base, at its own line; the line that named it is said too."""
    (tmp_path / "broken.yaml").write_text("name: base\nworkflow: {pipeline: [unclosed\n")
    child = tmp_path / "child.yaml"
    child.write_text("name: child\nextends: broken.yaml\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(child)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{tmp_path / 'broken.yaml'}:3:1: not valid YAML: "), line
    assert line.endswith(f" (the base scenario that {child}:2:10 extends)"), line


def test_empty_file(tmp_path: Path, cli):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = cli("validate", str(empty))
    assert result.code == 1
    assert result.err.strip() == f"{empty}:1:1: the file is empty (a scenario is a mapping)"
