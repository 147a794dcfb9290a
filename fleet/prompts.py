"""Prompt sets: loading, lookup by name, selection, and rendering into params.

A prompt set is a YAML file (``prompts/NAME.yaml``) with an id, text, category,
optional negative prompt and param overrides per prompt. A scenario names sets
by name (looked up on the prompt path) or by a path ending in ``.yaml``
(relative to the scenario file).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from fleet.document import load_document
from fleet.errors import Problem, PromptSetError, ScenarioError
from fleet.spec import Slug, Spec, close_match, parse

__all__ = [
    "PLACEHOLDERS",
    "PoolEntry",
    "Prompt",
    "PromptPicker",
    "PromptSet",
    "available_sets",
    "category_problem",
    "find_set",
    "load_prompt_set",
    "prompt_path",
    "render_params",
    "resolve_pool",
    "set_problem",
    "template_problems",
]

PLACEHOLDERS = ("prompt", "negative_prompt", "prompt_id", "category", "seed")
PROMPT_PATH_ENV = "FLEET_PROMPT_PATH"
MAX_REDRAWS = 16
_BUNDLED = Path(__file__).resolve().parent.parent / "prompts"


class Prompt(Spec):
    id: Slug
    text: str = Field(description="The prompt; may be empty (the stress set tests exactly that).")
    category: Slug
    negative_prompt: str = ""
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides merged over the workflow params.")


class PromptSet(Spec):
    name: Slug
    description: str = ""
    prompts: tuple[Prompt, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> PromptSet:
        seen: set[str] = set()
        for p in self.prompts:
            if p.id in seen:
                raise ValueError(f"prompt id {p.id!r} appears more than once (ids must be unique in a set)")
            seen.add(p.id)
        return self

    @property
    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts})


def load_prompt_set(path: str | Path) -> PromptSet:
    return parse(PromptSet, load_document(path, PromptSetError), PromptSetError)


def prompt_path(extra: list[Path] | None = None) -> list[Path]:
    """Directories searched for a set given by name, first match wins."""
    dirs = list(extra or [])
    dirs += [Path(p) for p in os.environ.get(PROMPT_PATH_ENV, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "prompts", _BUNDLED]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def available_sets(extra: list[Path] | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in prompt_path(extra):
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                found.setdefault(f.stem, f)
    return found


def find_set(ref: str, base_dir: Path | None = None) -> Path | None:
    """Resolve a set reference: a ``.yaml`` path (relative to ``base_dir``) or a set name."""
    if ref.endswith((".yaml", ".yml")):
        p = Path(ref) if Path(ref).is_absolute() else (base_dir or Path.cwd()) / ref
        return p if p.is_file() else None
    extra = [base_dir / "prompts", base_dir.parent / "prompts"] if base_dir else None
    return available_sets(extra).get(ref)


def template_problems(params: Any) -> list[str]:
    """Placeholders in a params template that are not known, and whether ${prompt} is used."""
    names: set[str] = set()
    bad: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            t = Template(v)
            if not t.is_valid():
                bad.append(f"{v!r} has a malformed placeholder (write ${{name}}, and $$ for a literal $)")
            names.update(t.get_identifiers())
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(params)
    bad += [f"unknown placeholder ${{{n}}} (allowed: {', '.join('${' + p + '}' for p in PLACEHOLDERS)})"
            for n in sorted(names - set(PLACEHOLDERS))]
    if "prompt" not in names:
        bad.append("the params template never uses ${prompt}, so the prompt would not reach the model")
    return bad


def render_params(template: dict[str, Any], prompt: Prompt, seed: int) -> dict[str, Any]:
    """The workflow params for one prompt: placeholders filled, then the prompt's overrides."""
    values = {"prompt": prompt.text, "negative_prompt": prompt.negative_prompt,
              "prompt_id": prompt.id, "category": prompt.category, "seed": str(seed)}

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            if v == "${seed}":
                return seed
            return Template(v).substitute(values)
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    return {**fill(template), **prompt.params}


@dataclass(frozen=True)
class PoolEntry:
    set_name: str
    weight: float
    prompt: Prompt


class SetChoice(Protocol):
    """A scenario's choice of one prompt set (fleet.scenario's PromptSetRef)."""

    @property
    def set(self) -> str: ...
    @property
    def weight(self) -> float: ...
    @property
    def categories(self) -> tuple[str, ...]: ...


def resolve_pool(choices: Iterable[SetChoice], base_dir: Path, source: Path | None = None) -> list[PoolEntry]:
    """Every prompt a campaign may use, in file order, with its set's weight: the prompt files read once,
    before planning (the planner itself reads no file). ``source``: the scenario file, for the error."""
    pool: list[PoolEntry] = []
    for ref in choices:
        path = find_set(ref.set, base_dir)
        if path is None:
            raise ScenarioError([Problem(str(source or "?"), 1, 1, "prompts.sets", set_problem(ref.set, base_dir))])
        prompt_set = load_prompt_set(path)
        pool += [PoolEntry(prompt_set.name, ref.weight, p) for p in prompt_set.prompts
                 if not ref.categories or p.category in ref.categories]
    return pool


class PromptPicker:
    """Chooses prompts from a pool, deterministically for a given seed.

    ``round_robin`` cycles in file order; ``random`` draws uniformly;
    ``weighted`` draws a set by its weight, then a prompt within it uniformly.
    """

    def __init__(self, pool: list[PoolEntry], selection: Literal["round_robin", "random", "weighted"],
                 seed: int | str) -> None:
        if not pool:
            raise ValueError("empty prompt pool")
        self._pool = pool
        self._selection = selection
        self._rng = random.Random(f"prompts:{seed}")
        self._next = 0
        by_set: dict[str, list[PoolEntry]] = {}
        for e in pool:
            by_set.setdefault(e.set_name, []).append(e)
        self._sets = list(by_set.values())
        self._set_weights = [group[0].weight for group in self._sets]

    def next(self, avoid: str | None = None) -> PoolEntry:
        """The next prompt; with ``avoid``, not that prompt id again (unless it is all there is)."""
        entry = self._draw()
        for _ in range(MAX_REDRAWS):
            if avoid is None or entry.prompt.id != avoid or len(self._pool) == 1:
                break
            entry = self._draw()
        return entry

    def _draw(self) -> PoolEntry:
        if self._selection == "round_robin":
            entry = self._pool[self._next % len(self._pool)]
            self._next += 1
            return entry
        if self._selection == "random":
            return self._rng.choice(self._pool)
        group = self._rng.choices(self._sets, weights=self._set_weights)[0]
        return self._rng.choice(group)


def category_problem(set_name: str, category: str, prompt_set: PromptSet) -> str | None:
    cats = prompt_set.categories
    if category in cats:
        return None
    guess = close_match(category, cats)
    hint = f", did you mean '{guess}'?" if guess else ""
    return f"set {set_name!r} has no category {category!r}{hint} (allowed: {', '.join(cats)})"


def set_problem(ref: str, base_dir: Path | None) -> str:
    names = sorted(available_sets([base_dir / "prompts", base_dir.parent / "prompts"] if base_dir else None))
    guess = close_match(ref, names)
    hint = f", did you mean '{guess}'?" if guess else ""
    return f"no prompt set {ref!r}{hint} (allowed: {', '.join(names) or 'none found'}, or a path to a .yaml file)"

