"""A sink's backlog: the records it has not taken yet, in order, in memory and mirrored in its spool file.

The file holds exactly the queue: each record is appended as it is queued and the file is rewritten (atomically)
when records leave, removed when none is left. A file that cannot be written (disk full) is retried with backoff;
meanwhile the queue is kept in memory and written out in full once the file is writable again. A file left by an
earlier process is loaded first (a file of a newer format is left alone, named in an error log line).

Example:
    >>> import os, tempfile
    >>> from spherewatch.delivery.record import Scalars
    >>> backlog = Backlog("jsonl", os.path.join(tempfile.mkdtemp(), "jsonl-0.spool.jsonl"))
    >>> backlog.push(Queued(Scalars(1, 0.0, {"a": 1.0})))
    False
    >>> len(backlog), os.path.exists(backlog.path)
    (1, True)
    >>> backlog.pop(); backlog.rewrite(); os.path.exists(backlog.path)
    False
"""
from __future__ import annotations

import collections
import logging
import math
import os
import time
from typing import Callable, Iterator, List, Optional

from spherewatch.delivery.record import NewerFormatError, Record, Scalars, encode
from spherewatch.delivery.spool import SinkSpool

__all__ = ["Backlog", "Queued"]

logger = logging.getLogger("spherewatch.sinks")


class Queued:
    """One queued record and its spool line (encoded once, when first spooled)."""

    __slots__ = ("line", "record")

    def __init__(self, record: Record, line: Optional[bytes] = None) -> None:
        self.record, self.line = record, line

    def encoded(self) -> bytes:
        if self.line is None:
            self.line = encode(self.record)
        return self.line


class Backlog:
    """The undelivered records of sink ``name`` (see the module docstring).

    Args:
        name: the sink's name (log lines).
        spool_path: the spool file; ``None`` keeps the backlog in memory only.
        max_pending: most records held; beyond it :meth:`push` pushes the oldest out.
        clock, retry_initial, retry_max: the backoff of a spool file that cannot be written.
    """

    def __init__(self, name: str, spool_path: Optional[str], *, max_pending: int = 100_000,
                 clock: Callable[[], float] = time.monotonic, retry_initial: float = 1.0,
                 retry_max: float = 60.0) -> None:
        self.name, self.max_pending = name, int(max_pending)
        self._file = SinkSpool(spool_path) if spool_path is not None else None
        self._queue: collections.deque[Queued] = collections.deque()
        self._clock, self._retry_initial, self._retry_max = clock, retry_initial, retry_max
        self._broken = False
        self._retry_at = -math.inf
        self._delay = retry_initial or 1.0

    @property
    def path(self) -> Optional[str]:
        return None if self._file is None else self._file.path

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Queued]:
        return iter(self._queue)

    @property
    def first(self) -> Queued:
        return self._queue[0]

    @property
    def retry_at(self) -> Optional[float]:
        """Clock time of the next try of a spool file that could not be written (``None``: it is fine)."""
        return self._retry_at if self._broken else None

    def push(self, item: Queued) -> bool:
        """Queue ``item`` (and append it to the file). True when the oldest record was pushed out for it."""
        dropped = len(self._queue) >= self.max_pending
        if dropped:
            self._queue.popleft()
        self._queue.append(item)
        was_broken = self._broken
        if self.usable():
            if was_broken:  # the spool came back: it was rewritten with the whole queue, this record included
                return dropped
            try:
                self._file.append(item.encoded())  # type: ignore[union-attr]
            except (OSError, ValueError, TypeError) as exc:
                self._failed(exc)
        return dropped

    def pop(self, n: int = 1) -> None:
        """Remove the ``n`` oldest records (call :meth:`rewrite` once after a run of pops)."""
        for _ in range(n):
            self._queue.popleft()

    def scalar_run(self, limit: int) -> Optional[List[Queued]]:
        """The leading run of scalar records (two or more, at most ``limit`` scalars in all), for one batched call."""
        run: List[Queued] = []
        metrics = 0
        for item in self._queue:
            if not isinstance(item.record, Scalars):
                break
            metrics += len(item.record.values)
            if run and metrics > limit:
                break
            run.append(item)
        return run if len(run) > 1 else None

    def usable(self) -> bool:
        """Whether the spool file can be written (retrying a broken one when its backoff has elapsed)."""
        if self._file is None:
            return False
        if self._broken and self._clock() >= self._retry_at:
            # retried like any sink: rewrite the whole backlog (the file must hold exactly the queue again)
            self._broken = False
            self.rewrite()
            if not self._broken:
                logger.info("spherewatch: the spool file %s of sink %r is writable again; it holds the %d queued "
                            "record(s).", self.path, self.name, len(self._queue))
                self._delay = self._retry_initial or 1.0
        return not self._broken

    def _failed(self, exc: BaseException) -> None:
        first = not self._broken
        self._broken = True
        self._retry_at = self._clock() + self._delay
        self._delay = min(self._retry_max, self._delay * 2)
        # the file no longer follows the queue (records delivered later would stay in it): remove it, or the next
        # sink opened on it would deliver them a second time
        self._file.discard()  # type: ignore[union-attr]
        if first:
            logger.warning(
                "spherewatch: cannot write the spool file %s of sink %r (%s: %s); its backlog is kept in memory and "
                "the spool is retried with backoff.", self.path, self.name, type(exc).__name__, exc,
            )

    def sync(self) -> None:
        if self._file is not None:
            try:
                self._file.sync()
            except OSError as exc:
                self._failed(exc)

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()

    def rewrite(self) -> None:
        """Make the spool file hold exactly the queue (atomically), or remove it when the queue is empty."""
        if not self.usable():
            return
        try:
            self._file.rewrite(item.encoded() for item in self._queue)  # type: ignore[union-attr]
        except (OSError, ValueError, TypeError) as exc:
            self._failed(exc)

    def load(self) -> None:
        """Queue the records of a spool file left by an earlier process (before any new one)."""
        if self._file is None or not self._file.exists():
            return
        path = self.path
        try:
            loaded = self._file.load()
        except NewerFormatError as err:
            logger.error("spherewatch: the spool file %s of sink %r in the folder %s was written by a newer "
                         "spherewatch (%s); it is left in place (deliver it with that version), and this sink's "
                         "backlog is kept in memory only.", path, self.name, os.path.dirname(path or ""), err)
            self._file = None
            return
        items = [Queued(record, line) for record, line in loaded.records]
        self._queue.extend(items[-self.max_pending:])
        if loaded.bad:
            logger.warning("spherewatch: skipped %d malformed line(s) in spool file %s.", loaded.bad, path)
        if items:
            logger.info(
                "spherewatch: found %d undelivered record(s) of sink %r from an earlier run in %s; they are "
                "delivered before new records.", len(items), self.name, path,
            )
        if loaded.bad or not loaded.clean_end or len(items) != len(self._queue) or not items:
            self.rewrite()  # leave a clean file that holds exactly the queue
