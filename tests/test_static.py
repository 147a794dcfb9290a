"""Static checks run with the tests: ruff (the rule set pyproject.toml chooses) over every Python file, mypy --strict
over fleet/, and the size and import-structure limits of the architecture issue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run([str(ruff), "check", "--no-cache", "fleet", "tests", "bench", "docs"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_no_module_over_400_lines_and_no_function_over_60():
    """The size limits the architecture issue set: a module holds one concept, a function one step."""
    import ast

    too_long = []
    for path in sorted((REPO / "fleet").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(REPO)
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno}: {node.name} is {lines} lines")
    assert not too_long, "\n".join(too_long)


def _fleet_imports(path: Path, everywhere: bool = True) -> set[str]:
    """The fleet modules ``path`` imports: at module level, under ``if TYPE_CHECKING:`` and (``everywhere``)
    inside function bodies too; ``from fleet.x import y`` counts ``fleet.x.y`` when that is a module."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if everywhere else iter(tree.body)
    deps: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleet"):
            deps.add(node.module)
            for alias in node.names:
                sub = REPO.joinpath(*node.module.split("."), alias.name)
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    deps.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("fleet"))
    return deps


def test_no_import_circle_inside_the_package():
    """Imports between fleet's modules form no cycle, counting every import: at module level, under
    ``if TYPE_CHECKING:`` (a cycle hidden from the interpreter is still one to a reader and to mypy) and
    inside function bodies (a deferred import breaks a cycle at run time, not in the design)."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / "fleet").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph.setdefault(module, set()).update(_fleet_imports(path))
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d == m or (d in graph and m.startswith(d + ".")):  # a package's own __init__ re-exports
                continue
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail, m, d]))
            if d in graph and not state.get(d):
                visit(d, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])


def test_the_reference_gateway_shares_no_code_with_the_probe_it_judges():
    """The gateway's truth (delivery times, residence, delays, egress timestamps) is computed by its own code:
    no module of fleet/gateway imports the probe's package, its RTP tap (``fleet.rtp``), its RTP data path
    (``fleet.leanrtp``) or its socket stamps (``fleet.sockstamp``), anywhere in the module, nor names them (the
    check ``grep -rn "fleet.probe\\|fleet.rtp\\|fleet.leanrtp\\|fleet.sockstamp" fleet/gateway`` comes back empty)."""
    shared = []
    for path in sorted((REPO / "fleet" / "gateway").rglob("*.py")):
        name = path.relative_to(REPO)
        shared += [f"{name}: imports {m}" for m in sorted(_fleet_imports(path))
                   if m in ("fleet.rtp", "fleet.leanrtp", "fleet.sockstamp") or m.startswith(("fleet.rtp.", "fleet.probe"))]
        text = path.read_text(encoding="utf-8")
        shared += [f"{name}: names {word}" for word in ("fleet.probe", "fleet.rtp", "fleet.leanrtp", "fleet.sockstamp")
                   if word in text]
    assert not shared, "\n".join(shared)


@pytest.mark.slow
def test_mypy_strict_finds_nothing():
    """mypy --strict over fleet/, with the settings in pyproject.toml ([tool.mypy])."""
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run([str(mypy)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
