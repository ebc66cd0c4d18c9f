"""The retrying sink wrapper: a sink's outage never takes training down and never loses a record.

Built on the record codec (:mod:`spherewatch.delivery.record`) and the spool (:class:`~spherewatch.delivery.spool.
SinkSpool`): the backlog is a queue of typed records, mirrored line by line in the sink's spool file.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from spherewatch.delivery.backlog import Backlog, Queued
from spherewatch.delivery.outage import Outage
from spherewatch.delivery.record import AlertEvent, Histogram, Record, Scalars, describe
from spherewatch.delivery.sink import Sink, as_float_array, capabilities

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["ResilientSink"]

logger = logging.getLogger("spherewatch.sinks")

OnError = Callable[[str, BaseException], None]


class ResilientSink(Sink):
    """Wrap a sink so that its failures are reported once, queued, retried, and never raised into training.

    On the first exception from the inner sink (an *outage*):

    * the fault is reported once: a ``logging`` warning and ``on_error(sink_name, exc)``;
    * the failed record and every later record are queued in order, in memory and (with ``spool_path``)
      appended to a JSON-lines spool file, so a crash of the process loses nothing;
    * later calls retry the backlog, oldest first, once the backoff has elapsed (``retry_initial``
      seconds, doubling after each failed retry up to ``retry_max``). Nothing ever sleeps: before that
      the call just queues its record and returns;
    * once the backlog is delivered, recovery is logged once and the spool file is removed.

    Records are replayed in order, each exactly once (a delivered record leaves the queue at once), with
    the wall time of the original call when the inner sink accepts ``wall_time``. A record the inner sink
    rejects as malformed (:meth:`Sink.is_permanent_error`, e.g. a ``ValueError``) cannot succeed on retry:
    it is dropped, counted in :attr:`dropped` and reported (the first time), and the rest goes on.

    A spool file that cannot be written (disk full) is retried like the sink, with the same backoff: the backlog
    stays in memory meanwhile and is written out in full once the spool is writable again.

    A spool file left by an earlier process (undelivered records at close, or a crash) is loaded at
    construction and delivered before any new record.

    :meth:`flush` retries the backlog when the backoff allows, then (if nothing is left) flushes the inner
    sink. :meth:`close` tries once more regardless of the backoff, closes the inner sink and says in a log
    line how many records are left undelivered and in which spool file they wait.

    Args:
        inner: the sink to protect.
        spool_path: JSON-lines file for the backlog (created ``0o644``); ``None`` keeps it in memory only.
        on_error: called as ``on_error(sink_name, exc)`` once per outage (and for the first dropped record),
            e.g. to raise an alert. Its own exceptions are logged, never raised.
        retry_initial: seconds before the first retry after a failure.
        retry_max: cap of the doubling backoff, in seconds.
        strict: re-raise the inner sink's exceptions instead (tests, debugging).
        max_pending: most records held in memory; beyond it the oldest are dropped (counted, logged once
            per outage).
        clock: monotonic clock in seconds used for the backoff (default ``time.monotonic``).
        on_recovered: called as ``on_recovered(sink_name)`` when an outage ends (the backlog is delivered).
        between: called between two deliveries of a backlog (e.g. the Monitor's writer yields to the training
            thread there).

    Raises:
        ValueError: negative ``retry_initial``, ``retry_max < retry_initial`` or ``max_pending < 1``.

    Example:
        >>> from spherewatch.sinks import MemorySink
        >>> sink = ResilientSink(MemorySink())
        >>> sink.log_scalars(0, {"spherewatch/uniformity": -3.5})
        >>> sink.pending, sink.healthy, sink.inner.last("spherewatch/uniformity")
        (0, True, -3.5)
    """

    def __init__(
        self,
        inner: Sink,
        *,
        spool_path: str | None = None,
        on_error: OnError | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        strict: bool = False,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        on_recovered: Callable[[str], None] | None = None,
        between: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        if not retry_initial >= 0:
            raise ValueError(f"`retry_initial` must be >= 0 seconds, got {retry_initial!r}.")
        if not retry_max >= retry_initial:
            raise ValueError(
                f"`retry_max` must be >= `retry_initial` ({retry_initial!r}), got {retry_max!r}."
            )
        if int(max_pending) < 1:
            raise ValueError(f"`max_pending` must be >= 1, got {max_pending!r}.")
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.on_error = on_error
        self.on_recovered = on_recovered
        #: called between two deliveries of a replayed backlog (``None``: nothing)
        self.between = between
        self.retry_initial = float(retry_initial)
        self.retry_max = float(retry_max)
        self.strict = bool(strict)
        self.max_pending = int(max_pending)
        self._clock = clock
        self._lock = threading.RLock()
        # the callbacks are read when called: a caller may set them after construction
        self._outage = Outage(self.name, retry_initial=self.retry_initial, retry_max=self.retry_max, clock=clock,
                              on_error=lambda name, exc: self.on_error(name, exc) if self.on_error else None,
                              on_recovered=lambda name: self.on_recovered(name) if self.on_recovered else None)
        self._backlog = Backlog(self.name, spool_path, max_pending=self.max_pending, clock=clock,
                                retry_initial=self.retry_initial, retry_max=self.retry_max)
        # what the inner sink supports, as it declares it: a sink with batches gets a replayed backlog in batches
        # (MLflow: one log_batch of up to 1000 metrics instead of one request per record)
        self._can = capabilities(inner)
        self._backlog.load()

    @property
    def spool_path(self) -> str | None:
        """The backlog's spool file (``None``: in memory only)."""
        return self._backlog.path

    # ------------------------------------------------------------------ public API
    @property
    def pending(self) -> int:
        """Number of records queued for delivery."""
        return len(self._backlog)

    @property
    def healthy(self) -> bool:
        """``True`` when no outage is in progress and nothing is queued."""
        return not self._outage.active and not self._backlog

    @property
    def dropped(self) -> int:
        """Records given up on: rejected as malformed by the inner sink, or pushed out by ``max_pending``."""
        return self._outage.dropped

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Deliver (or queue) one step's scalars; never raises unless ``strict``."""
        self._submit("scalars", lambda: Scalars(
            int(step), time.time() if wall_time is None else float(wall_time),
            {str(k): float(v) for k, v in scalars.items()},
        ))

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """Deliver (or queue) a histogram; never raises unless ``strict``."""
        self._submit("histogram", lambda: Histogram(
            int(step), time.time() if wall_time is None else float(wall_time), str(key), as_float_array(values),
        ))

    def log_alert(self, alert: Alert) -> None:
        """Deliver (or queue) an alert; never raises unless ``strict``."""
        self._submit("alert", lambda: AlertEvent(alert))

    def flush(self) -> None:
        """Retry the backlog if the backoff has elapsed; when nothing is queued, flush the inner sink.

        The Monitor flushes after every sampling step, so this respects the backoff like any other call
        (use :meth:`close` for a last attempt regardless of it).
        """
        with self._lock:
            if self._closed:
                return
            self._drain(force=False)
            if not self._backlog:
                try:
                    self.inner.flush()
                except Exception as exc:
                    if self.strict:
                        raise
                    self._fault(exc, f"flushing sink {self.name!r} failed")
                else:
                    self._outage.recovered(0)
            self._backlog.sync()

    def deliver_now(self) -> bool:
        """Try the backlog now, regardless of the backoff; True when nothing is left (the inner sink holds every
        record), e.g. before a last write that must follow them all."""
        with self._lock:
            if self._closed:
                return False
            self._drain(force=True)
            return not self._backlog

    def close(self) -> None:
        """Try to deliver the backlog once more, close the inner sink, and say what is left. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                self._drain(force=True)
            finally:
                try:
                    self.inner.close()
                except Exception as exc:
                    if self.strict:
                        raise
                    logger.warning("spherewatch: closing sink %r failed (%s: %s).", self.name,
                                   type(exc).__name__, exc)
                finally:
                    self._closed = True
                    self._finish_close()

    def __repr__(self) -> str:
        return (
            f"ResilientSink({self.inner!r}, pending={self.pending}, healthy={self.healthy}, "
            f"dropped={self.dropped}, spool_path={self.spool_path!r})"
        )

    # ------------------------------------------------------------------ delivery
    def _submit(self, op: str, build: Callable[[], Record]) -> None:
        with self._lock:
            self._check_open()
            try:
                record = Queued(build())
            except Exception as exc:  # the caller handed over something that is not a number
                if self.strict:
                    raise
                self._outage.drop(op, exc)
                return
            if self._backlog:  # keep order: behind the backlog
                self._enqueue(record)
                self._drain(force=False)
                return
            try:
                self._deliver(record)
            except Exception as exc:
                if self.strict:
                    raise
                if self._is_permanent(exc):
                    self._outage.drop(describe(record.record), exc)
                    return
                self._enqueue(record)
                self._fault(exc, f"sink {self.name!r} failed")
            else:
                self._outage.recovered(0)

    def _deliver(self, item: Queued) -> None:
        r = item.record
        if isinstance(r, Scalars):
            if self._can.wall_time:
                self.inner.log_scalars(r.step, r.values, wall_time=r.time)
            else:
                self.inner.log_scalars(r.step, r.values)
        elif isinstance(r, Histogram):
            if self._can.wall_time:
                self.inner.log_histogram(r.step, r.key, r.values, wall_time=r.time)
            else:
                self.inner.log_histogram(r.step, r.key, r.values)
        elif isinstance(r, AlertEvent):
            self.inner.log_alert(r.alert)
        else:
            raise TypeError(f"ResilientSink delivers scalars, histograms and alerts, not {describe(r)}.")

    def _drain(self, *, force: bool) -> None:
        if not self._backlog or (not force and not self._outage.due()):
            return
        removed = delivered = 0
        while self._backlog:
            if self.between is not None and removed:
                self.between()  # e.g. the Monitor's writer yields to an evaluation in progress
            record = self._backlog.first
            batch = self._backlog.scalar_run(self._can.batch_limit) if self._can.batches else None
            try:
                if batch is not None:
                    self.inner.log_scalars_batch([(i.record.step, i.record.values, i.record.time) for i in batch])
                else:
                    self._deliver(record)
            except Exception as exc:
                if self.strict:
                    raise
                if self._is_permanent(exc):
                    self._backlog.pop()
                    removed += 1
                    self._outage.drop(describe(record.record), exc)
                    continue
                if self._outage.active:
                    self._outage.backoff()
                    logger.debug("sink %r still failing (%s); %d queued, next retry in %.3gs.",
                                 self.name, exc, len(self._backlog), self._outage.delay)
                else:  # replaying a spool from an earlier run, and the sink is down
                    self._fault(exc, f"sink {self.name!r} failed")
                break
            n = len(batch) if batch is not None else 1
            self._backlog.pop(n)
            removed += n
            delivered += n
        if removed:
            self._backlog.rewrite()
        if not self._backlog:
            self._outage.recovered(delivered)

    @property
    def next_retry(self) -> float | None:
        """Clock time of the next retry of the backlog (``None`` when nothing waits)."""
        spool_due = self._backlog.retry_at
        if not self._backlog:
            return spool_due
        due = self._outage.next_retry
        return due if spool_due is None else max(due, spool_due)

    def _is_permanent(self, exc: BaseException) -> bool:
        try:
            return bool(self.inner.is_permanent_error(exc))
        except Exception:
            logger.debug("is_permanent_error of sink %r raised; treating the error as transient.", self.name,
                         exc_info=True)
            return False

    def _fault(self, exc: BaseException, what: str) -> None:
        """Start an outage (reported once, naming the spool file) or, during one, back off."""
        where = "" if self._outage.active or not self._backlog.usable() else f"; spooling to {self.spool_path}"
        self._outage.fault(exc, what, where)

    # ------------------------------------------------------------------ backlog
    def _enqueue(self, item: Queued) -> None:
        if self._backlog.push(item):  # the oldest was pushed out
            self._outage.dropped += 1
            if not self._outage.full_logged:
                self._outage.full_logged = True
                logger.warning(
                    "spherewatch: sink %r backlog reached max_pending=%d; dropping the oldest queued records "
                    "until it recovers.", self.name, self.max_pending,
                )

    def _close_spool_fd(self) -> None:
        """Close the spool file (its records stay in it: a crash here leaves them to the next sink on that file)."""
        self._backlog.close_file()

    def _finish_close(self) -> None:
        left = len(self._backlog)
        if left and self._backlog.usable():
            self._backlog.sync()
            logger.warning(
                "spherewatch: %d record(s) could not be delivered to sink %r; they are kept in the spool file %s "
                "and will be delivered, once, by the next sink opened on that file (in a Monitor: the next run that "
                "uses the same spool folder, into this run's destination).", left, self.name,
                self.spool_path,
            )
        elif left:
            logger.warning(
                "spherewatch: %d record(s) could not be delivered to sink %r and are lost (no spool file; pass "
                "spool_path=... to keep them).", left, self.name,
            )
        if self.dropped:
            logger.warning("spherewatch: sink %r dropped %d record(s) in total.", self.name, self.dropped)
        self._backlog.close_file()

