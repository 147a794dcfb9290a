"""User-written specs: closed, frozen pydantic models, and their error reports.

``Spec`` is the base of every model read from a user's file. ``parse`` validates
a loaded ``Document`` against one and turns pydantic's errors into located
``Problem`` lines (``file:line:col: field.path: what is wrong (allowed: ...)``),
with "did you mean" for misspelt keys.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from fleet.document import Document
from fleet.errors import InputError, Problem

__all__ = ["EnvName", "Slug", "Spec", "allowed_keys", "close_match", "parse", "problem_at"]

M = TypeVar("M", bound=BaseModel)

_SECRET_KEYS = {"token", "password", "secret", "api_key", "apikey", "auth", "user"}


class Spec(BaseModel):
    """Base of user-written models: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (allowed: A-Z, 0-9 and _, "
                         "not starting with a digit, e.g. LIVEPEER_TOKEN)")
    return value


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(f"{value!r} is not a valid name (allowed: lower-case letters, digits, '-', '_', '.', "
                         "starting with a letter or digit)")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
Slug = Annotated[str, AfterValidator(_slug)]


def close_match(word: str, options: list[str] | tuple[str, ...]) -> str | None:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def problem_at(doc: Document, path: tuple[Any, ...], message: str, *, key: bool = False) -> Problem:
    pos = doc.locate(path, key=key)
    return Problem(pos.file, pos.line, pos.col, _dotted(path), message)


def parse(model: type[M], doc: Document, error: type[InputError]) -> M:
    """Validate ``doc`` against ``model``; raise ``error`` listing every problem."""
    data = doc.data if doc.data is not None else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(model, doc, data, dict(err)) for err in exc.errors() if not _echo(dict(err))]
        raise error(list(dict.fromkeys(problems))) from None


def _echo(err: dict[str, Any]) -> bool:
    """pydantic's "too short after validation" when the items themselves failed (already reported)."""
    min_length = (err.get("ctx") or {}).get("min_length")
    return err["type"] == "too_short" and isinstance(err.get("input"), (list, tuple)) \
        and min_length is not None and len(err["input"]) >= min_length


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _tag_member(models: list[type[BaseModel]], label: Any) -> type[BaseModel] | None:
    """The union member whose discriminator value is ``label`` (pydantic puts it in ``loc``)."""
    if len(models) < 2 or not isinstance(label, str):
        return None
    for m in models:
        for info in m.model_fields.values():
            if get_origin(info.annotation) is Literal and label in get_args(info.annotation):
                return m
    return None


def _data_path(model: type[BaseModel], loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """pydantic's ``loc`` without the union-member labels it inserts, walked beside the model."""
    path: list[Any] = []
    types_: Any = model
    cur = data
    for el in loc:
        member = _tag_member(_candidates(types_), el)
        if member is not None:
            types_ = member
            continue
        if isinstance(el, int):
            types_ = _items(types_)
            cur = cur[el] if isinstance(cur, list) and el < len(cur) else None
        else:
            m = _pick(_candidates(types_), cur)
            types_ = m.model_fields[el].annotation if m is not None and el in m.model_fields else None
            cur = cur.get(el) if isinstance(cur, dict) else None
        path.append(el)
    return tuple(path)


def _candidates(tp: Any) -> list[type[BaseModel]]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _candidates(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _candidates(arg)]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return []


def _items(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _items(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _items(inner[0]) if len(inner) == 1 else None
    if origin in (tuple, list):
        return get_args(tp)[0]
    return None


def _pick(models: list[type[BaseModel]], data: Any) -> type[BaseModel] | None:
    """Among union members, the one whose Literal tag matches ``data``."""
    if len(models) == 1:
        return models[0]
    if not isinstance(data, dict):
        return None
    for m in models:
        for name, info in m.model_fields.items():
            if get_origin(info.annotation) is Literal and data.get(name) in get_args(info.annotation):
                return m
    return None


def allowed_keys(model: type[BaseModel], path: tuple[Any, ...], data: Any) -> list[str] | None:
    """The keys the model accepts at ``path`` (a mapping in ``data``), if it is a model."""
    types_: Any = model
    cur = data
    for part in path:
        if isinstance(part, int):
            types_ = _items(types_)
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
            continue
        m = _pick(_candidates(types_), cur)
        if m is None or part not in m.model_fields:
            return None
        types_ = m.model_fields[part].annotation
        cur = cur.get(part) if isinstance(cur, dict) else None
    m = _pick(_candidates(types_), cur)
    return list(m.model_fields) if m else None


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "dict": "a mapping", "model": "a mapping", "list": "a list", "tuple": "a list",
}


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unquote_list(expected: str) -> str:
    return ", ".join(part.strip().strip("'") for part in re.split(r",| or ", expected) if part.strip())


def _problem(model: type[BaseModel], doc: Document, data: Any, err: dict[str, Any]) -> Problem:
    path = _data_path(model, tuple(err["loc"]), data)
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = allowed_keys(model, path[:-1], data) or []
        if key.lower() in _SECRET_KEYS and f"{key.lower()}_env" in allowed:
            msg = (f"secrets never go in a scenario: name the environment variable that holds it "
                   f"with '{key.lower()}_env' instead")
        else:
            guess = close_match(key, allowed)
            msg = "unknown key" + (f", did you mean '{guess}'?" if guess else "")
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        return problem_at(doc, path, msg, key=True)
    if kind == "missing":
        return problem_at(doc, path, "required field is missing")
    if kind == "literal_error":
        msg = f"{_shown(value)} is not allowed (allowed: {_unquote_list(ctx.get('expected', ''))})"
    elif kind == "union_tag_invalid":
        msg = (f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} {ctx.get('tag')!r} "
               f"(allowed: {_unquote_list(ctx.get('expected_tags', ''))})")
    elif kind == "union_tag_not_found":
        disc = ctx.get("discriminator", "kind").strip("'")
        tags = _tags(model, path, data, disc)
        msg = f"'{disc}' is required to say which kind this is" + (f" (allowed: {tags})" if tags else "")
    elif kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
    elif kind == "too_short":
        n = ctx.get("min_length")
        msg = f"needs at least {n} item{'s' if n != 1 else ''}, got {ctx.get('actual_length', 0)}"
    elif kind == "too_long":
        n = ctx.get("max_length")
        msg = f"takes at most {n} item{'s' if n != 1 else ''}, got {ctx.get('actual_length')}"
    elif kind.endswith(("_type", "_parsing")) and kind.split("_")[0] in _TYPE_WORDS:
        msg = f"expected {_TYPE_WORDS[kind.split('_')[0]]}, got {_shown(value)}"
    elif kind == "model_attributes_type":
        msg = f"expected a mapping, got {_shown(value)}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"):
        msg = err["msg"].replace("Input should be", "must be") + f", got {_shown(value)}"
    else:
        msg = err["msg"][0].lower() + err["msg"][1:]
    return problem_at(doc, path, msg)


def _tags(model: type[BaseModel], path: tuple[Any, ...], data: Any, disc: str) -> str:
    """The allowed values of discriminator ``disc`` for the union at ``path``."""
    types_: Any = model
    for part in path:
        if isinstance(part, int):
            types_ = _items(types_)
            continue
        ms = [m for m in _candidates(types_) if part in m.model_fields]
        if not ms:
            return ""
        types_ = ms[0].model_fields[part].annotation
    tags: list[str] = []
    for m in _candidates(types_):
        info = m.model_fields.get(disc)
        if info is not None and get_origin(info.annotation) is Literal:
            tags.extend(str(a) for a in get_args(info.annotation))
    return ", ".join(tags)
