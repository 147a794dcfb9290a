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


def test_no_import_circle_inside_the_package():
    """Module-level imports between fleet's modules form no cycle (imports inside functions and under
    TYPE_CHECKING are left out: they are the way to break one)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in (REPO / "fleet").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        deps = graph.setdefault(module, set())
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleet"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("fleet"))
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


@pytest.mark.slow
def test_mypy_strict_finds_nothing():
    """mypy --strict over fleet/, with the settings in pyproject.toml ([tool.mypy])."""
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run([str(mypy)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
