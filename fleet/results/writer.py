"""Results written off the campaign's dispatch loop.

The dispatch loop starts sessions on time and times how long due sessions wait for a slot; an fsync'd
Parquet write or a ClickHouse retry inside it would delay starts and be charged to those sessions as
capacity starvation. ``ResultsWriter`` takes finished batches on a bounded queue and writes them, in
order, on its own thread. Nothing is dropped: a full queue makes ``submit`` wait (and says so once),
``wait`` returns when everything queued is written, and ``close`` writes everything still queued before
it returns. An error in the writer is raised by ``wait``, ``close`` and the next ``submit``, so it is
never silent.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ResultsWriter"]

T = TypeVar("T")

QUEUE_BATCHES = 256   # batches waiting to be written before submit waits for the writer


class ResultsWriter(Generic[T]):
    def __init__(self, write: Callable[[T], None], maxsize: int = QUEUE_BATCHES) -> None:
        self._write = write
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._warned = False
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="fleet-results-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            rows = self._queue.get()
            try:
                if rows is None:
                    return
                if self._error is not None:
                    continue  # keep draining so submit never blocks on a dead writer
                self._write(rows)
                self.batches += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the dispatch thread by close()
                self._error = exc
            finally:
                self._queue.task_done()

    def submit(self, rows: T) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            if not self._warned:
                self._warned = True
                print("fleet: the results writer is behind (storage slow?): starts wait for it", file=sys.stderr,
                      flush=True)
            self._queue.put(rows)

    def wait(self) -> None:
        """Everything queued so far written; raise the writer's error if it had one."""
        if self._thread.is_alive():
            self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Write everything queued, stop the thread; raise the writer's error if it had one."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
