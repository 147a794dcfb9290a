"""Graduation: which orchestrator x GPU pairs have earned a workflow, by rules declared in YAML.

A rules file (validated like a scenario: one located line per mistake; its JSON Schema is
``fleet schema graduation``) names, per model (or ``"*"``), when a pair graduates and when it is demoted::

    rules:
      - model: streamdiffusion
        graduate: {days: 3, min_sessions: 10, min_score: 90}
        demote: {days: 2}

Each UTC day a pair is *judged* when it has at least ``min_sessions`` counted sessions that day; the day is
good when their SLA score (the network's formula, against that day's network benchmark) is at least
``min_score``, bad otherwise. A pair not graduated (``unproven``, or ``demoted``) graduates after
``graduate.days`` good judged days in a row; a graduated one is demoted after ``demote.days`` bad judged
days in a row. Days it was not judged neither count nor break a run. Every change keeps the days that made
it (its evidence).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from fleet.document import load_document
from fleet.errors import InputError
from fleet.spec import Spec, parse

__all__ = ["Change", "Day", "GraduationRule", "GraduationRules", "STATES", "graduate", "load_rules", "rule_for"]

STATES = ("unproven", "graduated", "demoted")


class Graduate(Spec):
    days: int = Field(3, ge=1, le=365, description="Good judged days in a row that graduate a pair.")
    min_sessions: int = Field(10, ge=1, description="Counted sessions a day needs before it is judged.")
    min_score: float = Field(95.0, ge=0, le=100, description="The SLA score a good day reaches (NaaP's target: 95).")


class Demote(Spec):
    days: int = Field(2, ge=1, le=365, description="Bad judged days in a row that demote a graduated pair.")


class GraduationRule(Spec):
    model: str = Field(description="The workflow's model, or \"*\" for any model no other rule names.")
    graduate: Graduate = Field(default_factory=Graduate)
    demote: Demote = Field(default_factory=Demote)


class GraduationRules(Spec):
    rules: tuple[GraduationRule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_rule_per_model(self) -> GraduationRules:
        models = [r.model for r in self.rules]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise ValueError(f"model {', '.join(map(repr, twice))} has more than one rule (give each model one)")
        return self


def load_rules(path: str | Path) -> GraduationRules:
    """A rules file, or an InputError with one located line per mistake."""
    return parse(GraduationRules, load_document(path, InputError), InputError)


def rule_for(rules: GraduationRules, model: str) -> GraduationRule | None:
    """The rule naming the model, else the ``"*"`` one, else None."""
    return next((r for r in rules.rules if r.model == model), None) or \
        next((r for r in rules.rules if r.model == "*"), None)


@dataclass(frozen=True)
class Day:
    """One UTC day of a pair: its counted sessions and their SLA score (None without any)."""

    day: dt.date
    counted: int
    score: float | None


@dataclass(frozen=True)
class Change:
    day: dt.date
    state: str
    evidence: tuple[dt.date, ...]   # the judged days in a row that made it


def graduate(days: Iterable[Day], rule: GraduationRule) -> tuple[str, list[Change]]:
    """The pair's state after these days, and every change on the way."""
    state, run, changes = "unproven", list[dt.date](), list[Change]()
    for d in sorted(days, key=lambda d: d.day):
        if d.score is None or d.counted < rule.graduate.min_sessions:
            continue   # not judged: neither counts nor breaks a run
        good = d.score >= rule.graduate.min_score
        toward = good if state != "graduated" else not good
        run = [*run, d.day] if toward else []
        needed = rule.demote.days if state == "graduated" else rule.graduate.days
        if len(run) >= needed:
            state = "demoted" if state == "graduated" else "graduated"
            changes.append(Change(d.day, state, tuple(run)))
            run = []
    return state, changes
