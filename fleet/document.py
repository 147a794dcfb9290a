"""YAML documents that remember where every value came from.

A user's file is loaded into plain Python data plus a map from each value's
path (a tuple of keys and list indices) to its (file, line, column), so that a
validation error deep inside a model can be reported as ``file:line:col``.
``extends:`` merges such documents; the map keeps the position of whichever
file a value finally came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import InputError, Problem

__all__ = ["Document", "Position", "load_document", "merge"]

Key = str | int
Path_ = tuple[Key, ...]
MAX_BYTES = 1 << 20       # a scenario, prompt set or gateway config is a few KiB; more is a mistake or an attack
MAX_VALUES = 100_000      # values after expanding aliases: an alias bomb ("billion laughs") stops here
MAX_DEPTH = 64            # nesting depth


@dataclass(frozen=True)
class Position:
    file: str
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class Document:
    """Data loaded from YAML, with the position of every value and key."""

    data: Any
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)

    def locate(self, path: Path_, *, key: bool = False) -> Position:
        """The position of ``path``, or of its nearest located ancestor."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Position(next(iter(self.values.values())).file if self.values else "?", 1, 1)


class _Loader(yaml.SafeLoader):
    """The safe loader; ``_walk`` builds mappings itself so it can refuse duplicate keys."""


def _mark(file: str, node: yaml.Node) -> Position:
    return Position(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _TooBig(Exception):
    def __init__(self, node: yaml.Node, what: str) -> None:
        super().__init__(what)
        self.node, self.what = node, what


def _walk(node: yaml.Node, file: str, path: Path_, doc: Document, problems: list[Problem],
          loader: _Loader) -> Any:
    if len(doc.values) >= MAX_VALUES:
        raise _TooBig(node, f"more than {MAX_VALUES} values (anchors and aliases expanding without bound?)")
    if len(path) > MAX_DEPTH:
        raise _TooBig(node, f"nested deeper than {MAX_DEPTH} levels")
    doc.values[path] = _mark(file, node)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            here = _mark(file, key_node)
            if key in out:
                problems.append(Problem(file, here.line, here.col, ".".join(map(str, path + (key,))),
                                        "duplicate key (each key may appear once)"))
                continue
            doc.keys[path + (key,)] = here
            out[key] = _walk(value_node, file, path + (key,), doc, problems, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(child, file, path + (i,), doc, problems, loader) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_document(path: str | Path, error: type[InputError] = InputError) -> Document:
    """Read one YAML file; raise ``error`` with a located problem if it is not YAML."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error([Problem(name, 1, 1, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise error([Problem(name, 1, 1, "", f"cannot read file ({reason})")]) from exc
    if len(text) > MAX_BYTES:
        raise error([Problem(name, 1, 1, "", f"the file is {len(text) // 1024} KiB; at most {MAX_BYTES // 1024} KiB "
                                             "is read")])
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise error([Problem(name, 1, 1, "", f"nested too deeply (at most {MAX_DEPTH} levels)")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise error([Problem(name, line, col, "", f"not valid YAML: {exc.problem or exc.context}")]) from exc
    except yaml.YAMLError as exc:
        raise error([Problem(name, 1, 1, "", f"not valid YAML: {exc}")]) from exc
    doc = Document(data=None)
    if node is None:
        doc.values[()] = Position(name, 1, 1)
        return doc
    problems: list[Problem] = []
    try:
        doc.data = _walk(node, name, (), doc, problems, _Loader(""))
    except _TooBig as exc:
        at = _mark(name, exc.node)
        raise error([Problem(name, at.line, at.col, "", exc.what)]) from None
    if problems:
        raise error(problems)
    return doc


def merge(base: Document, child: Document, kinds: tuple[str, ...] = ()) -> Document:
    """``child`` over ``base``: mappings merge key by key, anything else is replaced.

    A mapping whose kind changes (a key in ``kinds``, such as ``shape``, differs) is
    replaced whole: the base's keys belong to the other kind.
    """
    out = Document(data=None)

    def same_kind(b: dict[str, Any], c: dict[str, Any]) -> bool:
        return all(b.get(k) == c[k] for k in kinds if k in c and k in b)

    def go(b: Any, c: Any, path: Path_) -> Any:
        if isinstance(b, dict) and isinstance(c, dict) and same_kind(b, c):
            _copy(child, out, path, shallow=True)
            merged = dict(b)
            for k, v in c.items():
                if k in b:
                    merged[k] = go(b[k], v, path + (k,))
                else:
                    merged[k] = v
                    _copy(child, out, path + (k,))
            for k in b.keys() - c.keys():
                _copy(base, out, path + (k,))
            return merged
        _copy(child, out, path)
        return c

    if base.data is None:
        return child
    if child.data is None:
        return base
    out.data = go(base.data, child.data, ())
    return out


def _copy(src: Document, dst: Document, prefix: Path_, shallow: bool = False) -> None:
    for table_name in ("values", "keys"):
        src_table, dst_table = getattr(src, table_name), getattr(dst, table_name)
        for p, pos in src_table.items():
            if p[: len(prefix)] == prefix and (not shallow or len(p) == len(prefix)):
                dst_table[p] = pos
