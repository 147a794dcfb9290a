"""The dashboard's HTML, rendered on the server through Jinja2: a page is a list of ``Section`` s.

No JavaScript at all: filters are a plain GET form (so every view is a URL that can be shared), charts
are SVG drawn by matplotlib on the server (fleet.results.charts; without the charts extra each chart is a
note saying how to get it). One template (``templates/page.html``) renders every page and escapes every
value; only ``Markup`` made here (links, whose parts ``Markup.format`` escapes, and matplotlib's SVG) goes
in as it is. Numbers are formatted (``num``, ``pct``), never interpolated raw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from fleet.dashboard import queries as q
from fleet.results.charts import render

__all__ = ["PAGES", "Section", "Table", "anchor", "chart", "link", "num", "page", "pct", "sessions_link"]

PAGES = (("/", "Leaderboard"), ("/workflows", "Workflows & prompts"), ("/capacity", "Capacity & coverage"),
         ("/graduation", "Graduation"), ("/demand", "Demand gaps"), ("/sessions", "Sessions"),
         ("/campaigns", "Campaigns"))
COUNTED_NOTE = ("Sessions counted as the SLA counts them: not skipped for capacity, not the tester's failures, "
                "not failures the network excuses.")


@dataclass(frozen=True)
class Table:
    head: Sequence[str]
    rows: Sequence[Sequence[Any]]
    numeric: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Section:
    title: str | None = None
    note: str | Markup | None = None
    table: Table | None = None
    chart: Markup | None = None
    empty: str | None = None       # said when the table has no rows
    quiet: bool = False            # the empty text as a note, not as the section's finding


@dataclass(frozen=True)
class Select:
    name: str
    choices: Sequence[tuple[str, str]]
    current: str | None


@dataclass(frozen=True)
class Form:
    action: str
    selects: Sequence[Select]
    hidden: Sequence[tuple[str, str]] = field(default_factory=tuple)


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=PackageLoader("fleet.dashboard", "templates"), autoescape=select_autoescape(["html"]),
                       trim_blocks=True, lstrip_blocks=True)


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def anchor(href: str, text: Any) -> Markup:
    """A link; both parts escaped."""
    return Markup('<a href="{}">{}</a>').format(href, text)


def link(path: str, f: q.Filters, **extra: Any) -> str:
    """The path with the view's filters and ``extra`` (None values left out) as its query string."""
    return f"{path}?{f.query(**extra)}"


def sessions_link(f: q.Filters, count: Any, **which: Any) -> Markup | str:
    """A count as a link to the sessions behind it (``/sessions`` with the same filters)."""
    return anchor(link("/sessions", f, **which), num(count)) if count else num(count)


def page(title: str, path: str, f: q.Filters, opts: dict[str, list[str]], sections: Sequence[Section],
         hidden: dict[str, str] | None = None, windows: Sequence[str] = tuple(q.WINDOWS)) -> str:
    def select(name: str, values: list[str], current: str | None) -> Select:
        return Select(name, [("", "all"), *((v, v) for v in values)], current or "")

    form = Form(path, [Select("window", [(w, w) for w in windows], f.window),
                       select("model", opts.get("model", []), f.model), select("region", opts.get("region", []), f.region),
                       select("category", opts.get("category", []), f.category)],
                tuple((hidden or {}).items()))
    made = f"{COUNTED_NOTE} Made {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC."
    return _env().get_template("page.html").render(
        title=title, nav=[(link(p, f), name) for p, name in PAGES], form=form, sections=sections, footer=made)


def chart(draw: Any, empty: str) -> Markup:
    """fleet.results.charts.render's output: matplotlib's SVG, or a note it escaped itself."""
    return Markup(render(draw, empty))  # noqa: S704 - made by matplotlib or escaped by render


