from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.cli import main

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run the ``fleet`` CLI in-process; return exit code and captured output."""

    def run(*argv: str) -> CliResult:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors and --help
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
