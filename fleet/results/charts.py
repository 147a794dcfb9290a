"""Charts for the campaign report and the dashboard: SVG drawn on the server by matplotlib.

matplotlib is the optional ``charts`` extra (``pip install 'fleet[charts]'``). Without it every
report and dashboard view is still written, with each chart replaced by a one-line note saying how
to get it; the numbers are in the tables either way.
"""

from __future__ import annotations

import html
import importlib
import io
from collections.abc import Callable
from typing import Any

__all__ = ["COLORS", "MISSING", "available", "figure", "render", "svg"]

COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
MISSING = ("Charts need matplotlib, the optional charts extra: pip install 'fleet[charts]' "
           "(from a checkout: pip install -e '.[charts]').")


def available() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    return True


def figure(w: float = 9, h: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    """A new figure and its axes, for SVG output (text kept as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt.subplots(1, ncols, figsize=(w, h))


def svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def render(draw: Callable[[], str | None], empty: str) -> str:
    """The chart ``draw`` makes (None when there is no data: then ``empty``), or the note that charts
    need matplotlib."""
    if not available():
        return f"<p class=note>{html.escape(MISSING)}</p>"
    chart = draw()
    return chart if chart is not None else f"<p class=note>{html.escape(empty)}</p>"
