"""Where finished sessions go: one small protocol every output implements, held in one list.

An output (``Sink``) takes ``Batch``es of typed rows (``fleet.results.row.SessionRow``) and is closed
once at the end. ``Outputs`` holds the run's outputs in one order and feeds them:

- outputs that never block (``stored = False``: the live tally, the sketches, Prometheus, Kafka,
  whose producer buffers) get each batch at once, on the driver's loop;
- storage (``stored = True``: Parquet, then ClickHouse) gets the rows on the results writer's thread
  (``fleet.results.writer``), so an fsync or a retry never delays a start. Rows are gathered for
  ``flush_s`` (0: every batch at once) and each stored batch gets the next sequence number, which
  names its Parquet files and is ClickHouse's dedup token.

At the end, ``store`` hands storage the run's last tables (the campaign's sketches), ``drain`` waits for
everything to be written, and ``close`` closes every output in the list's order, once, on every exit path
(the run's ``ExitStack`` holds it), and gathers what each reports for the summary (Kafka's deliveries,
ClickHouse's rows or error) under the output's ``name``.

Adding an output is one class with ``name``, ``stored``, ``add`` and ``close``, and one entry in the list
(``fleet.runtime.lifecycle.open_outputs``). ``MemorySink`` keeps what it is given: driver tests read it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from fleet.errors import FleetError, TesterError
from fleet.results.row import SessionRow
from fleet.results.sink import Batch
from fleet.results.writer import ResultsWriter

__all__ = ["Batch", "MemorySink", "Outputs", "Sink", "Tally"]


class Sink(Protocol):
    name: str      # the key of what close() reports, in the summary
    stored: bool   # True: written on the writer's thread, in order (may block); False: at once, never blocks

    def add(self, batch: Batch) -> None: ...

    def close(self) -> dict[str, Any] | None:
        """No more batches: end, and report what the summary should say of this output (or None)."""


@dataclass
class MemorySink:
    """Every batch it is given, in memory (a fake output, for tests of the driver)."""

    name: str = "memory"
    stored: bool = False
    batches: list[Batch] = field(default_factory=list)
    closed: bool = False

    def add(self, batch: Batch) -> None:
        self.batches.append(batch)

    def close(self) -> dict[str, Any]:
        self.closed = True
        return {"rows": len(self.rows)}

    @property
    def rows(self) -> list[SessionRow]:
        return [r for b in self.batches for r in b.rows]


@dataclass
class Tally:
    """The live summary: sessions by outcome, and how many ran (planner skips are counted, not run)."""

    name: str = "tally"
    stored: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    done: int = 0

    def add(self, batch: Batch) -> None:
        for r in batch.rows:
            self.counts[r.outcome] = self.counts.get(r.outcome, 0) + 1
            if r.error_class != "planner_skipped":
                self.done += 1

    def close(self) -> None:
        return None


class Outputs:
    """The run's outputs, fed in their list's order; ``close`` stores everything gathered, then closes each."""

    def __init__(self, sinks: Sequence[Sink] = (), flush_s: float = 0.0) -> None:
        self.sinks: list[Sink] = []
        self.flush_s = flush_s
        self._seq = {False: 0, True: 0}
        self._pending: list[SessionRow] = []
        self._tables: dict[str, list[pa.Table]] = {}   # other tables for the next stored batch (capacity)
        self._flushed = time.monotonic()
        self._writer: ResultsWriter[Batch] = ResultsWriter(self._store)
        self.states: dict[str, dict[str, Any]] | None = None   # what close() gathered, once closed
        for s in sinks:
            self.append(s)

    def append(self, sink: Sink) -> None:
        """One more output, after those already held."""
        self.sinks.append(sink)

    def _next(self, stored: bool, rows: Sequence[SessionRow], extra: Mapping[str, pa.Table] | None = None) -> Batch:
        self._seq[stored] += 1
        return Batch(self._seq[stored], tuple(rows), dict(extra or {}))

    def _store(self, batch: Batch) -> None:
        for s in self.sinks:
            if s.stored:
                s.add(batch)

    def add(self, rows: Sequence[SessionRow]) -> None:
        if not rows:
            return
        batch = self._next(False, rows)
        for s in self.sinks:
            if not s.stored:
                s.add(batch)
        self._pending.extend(rows)
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def add_table(self, kind: str, table: pa.Table) -> None:
        """Rows of another table (the capacity series), stored with the next batch."""
        self._tables.setdefault(kind, []).append(table)
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Hand what is gathered to storage now (it is written on the writer's thread)."""
        self._flushed = time.monotonic()
        if self._pending or self._tables:
            tables = {kind: pa.concat_tables(parts) for kind, parts in self._tables.items()}
            self._writer.submit(self._next(True, self._pending, tables))
            self._pending, self._tables = [], {}

    def store(self, tables: Mapping[str, pa.Table]) -> None:
        """The run's last tables (its summaries), to storage after everything gathered."""
        self.flush()
        if tables:
            self._writer.submit(self._next(True, (), tables))

    def drain(self) -> None:
        """Everything gathered written (the writer's error, if it had one, raised here)."""
        self.flush()
        self._writer.wait()

    def close(self) -> dict[str, dict[str, Any]]:
        """Close every output once, in order, each even when one before it failed; what each reports. The
        first failure is raised once every output was tried (a FleetError as it is, any other as a
        TesterError saying it in one line: the CLI's exit 4, never a traceback)."""
        if self.states is not None:
            return self.states
        states: dict[str, dict[str, Any]] = {}
        failure: BaseException | None = None
        try:
            self.flush()
            self._writer.close()
        except Exception as exc:  # noqa: BLE001 - the outputs still close; raised below
            failure = exc
        for s in self.sinks:
            try:
                state = s.close()
            except Exception as exc:  # noqa: BLE001 - the others still close; the first failure is raised
                failure = failure or exc
                continue
            if state is not None:
                states[s.name] = state
        self.states = states
        if isinstance(failure, FleetError):
            raise failure
        if failure is not None:   # a disk full, a file system gone: the tester's own failure, in one line
            raise TesterError(f"storing the results failed ({type(failure).__name__}: "
                              f"{str(failure).splitlines()[0] if str(failure) else ''})") from failure
        return states

    def exit(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        """The run's stack closing (``ExitStack.push``): close every output. Ending on an error already, a
        failure to close is told in one line, never raised over that error."""
        try:
            self.close()
        except Exception as failure:  # noqa: BLE001 - see above
            if exc is None:
                raise
            print(f"fleet: closing the outputs failed too: {failure}", file=sys.stderr, flush=True)
        return False
