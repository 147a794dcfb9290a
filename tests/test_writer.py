"""The results writer keeps I/O off the dispatch loop without losing or reordering a batch."""

from __future__ import annotations

import threading

import pytest

from fleet.results.writer import ResultsWriter


def test_submit_returns_while_a_write_is_blocked_and_close_writes_everything_in_order():
    release = threading.Event()
    started = threading.Event()
    written: list[int] = []

    def slow_write(rows):
        started.set()
        assert release.wait(10), "the test never released the writer"
        written.extend(r["n"] for r in rows)

    writer = ResultsWriter(slow_write, maxsize=100)
    writer.submit([{"n": 0}])
    assert started.wait(10)
    for n in range(1, 50):  # the first write is still blocked: these must not wait for it
        writer.submit([{"n": n}])
    assert written == []
    release.set()
    writer.close()
    assert written == list(range(50)) and writer.batches == 50


def test_a_write_error_is_raised_not_lost():
    def failing(rows):
        raise OSError("disk full")

    writer = ResultsWriter(failing)
    writer.submit([{"n": 1}])
    with pytest.raises(OSError, match="disk full"):
        writer.close()
