"""The whole scenario, and loading one: ``extends:`` chains, validation with file positions, and the
checks that need other files (prompt sets, media files)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from fleet.document import Document, load_document, merge
from fleet.errors import Problem, PromptSetError, ScenarioError
from fleet.prompts import (PromptSet, category_problem, find_set, load_prompt_set, set_problem)
from fleet.spec import Slug, Spec, parse, problem_at
from fleet.scenario.policy import CapacityPolicy, CheckSpec, MonitorSpec, Outputs, Placement
from fleet.scenario.target import Target
from fleet.scenario.workload import Load, Media, PromptsSpec, SyntheticMedia, Workflow

MAX_EXTENDS_DEPTH = 8
DISCRIMINATORS = ("shape", "source", "dist")  # a child that changes one replaces the base's mapping


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
    _doc: Document | None = PrivateAttr(None)

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

    def locate(self, *path: str) -> str:
        """``file:line:col: dotted.path`` of a field, as the scenario's files place it (the file that set
        it, through ``extends:``), for an error found after loading; the file alone when not known."""
        dotted = ".".join(path)
        if self._doc is None:
            return f"{self._source or '<scenario>'}: {dotted}"
        pos = self._doc.locate(tuple(path))
        return f"{pos.file}:{pos.line}:{pos.col}: {dotted}"

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


def _resolve(path: Path, chain: tuple[Path, ...], named_by: tuple[Document, str] | None = None) -> Document:
    """The scenario at ``path`` merged over its bases. ``named_by``: the document whose ``extends:`` names
    this file (and the name it gave): a file that is no scenario at all is that line's error, not its own;
    a base that cannot be read (not YAML, too big) is its own error, at its own line, naming that line."""
    try:
        doc = load_document(path, ScenarioError)
    except ScenarioError as exc:
        if named_by is None:
            raise
        at = named_by[0].locate(("extends",))
        raise ScenarioError([replace(p, message=f"{p.message} (the base scenario that {at.file}:{at.line}:{at.col} "
                                                f"extends)") for p in exc.problems]) from None
    data = doc.data
    why = ("the file is empty (a scenario is a mapping)" if data is None
           else "a scenario must be a mapping of keys to values" if not isinstance(data, dict)
           else _other_document(data) if named_by is not None else None)
    if why is not None:
        if named_by is not None:
            raise _not_a_scenario(named_by, why)
        raise ScenarioError([Problem(str(path), 1, 1, "", why) if data is None else problem_at(doc, (), why)])
    assert isinstance(data, dict)
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
    return merge(_resolve(base_path, (*chain, path.resolve()), (doc, parent)), doc, kinds=DISCRIMINATORS)


def _other_document(data: dict[Any, Any]) -> str | None:
    """Why a mapping named as a base scenario is some other document (None: it is taken as a scenario,
    and its own problems are reported in it)."""
    if "set" in data and isinstance(data.get("prompts"), list):
        return "it is a prompt set (name it under prompts.sets)"
    if not set(data) & set(Scenario.model_fields):
        return f"none of its keys ({', '.join(sorted(map(str, data)))}) is a scenario's"
    return None


def _not_a_scenario(named_by: tuple[Document, str], why: str) -> ScenarioError:
    doc, name = named_by
    return ScenarioError([problem_at(doc, ("extends",), f"{name!r} is not a scenario: {why}")])


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
    scenario._doc = doc
    return scenario
