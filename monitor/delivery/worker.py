"""The writer thread and its queue, in the manner of TensorBoard's ``_AsyncWriterThread``.

Items are put on an unbounded ``queue.SimpleQueue`` (re-entrant: safe from a signal handler) and handed, one by one,
to ``handle`` on the one thread. Two markers steer it: a :class:`Barrier` (:meth:`Worker.barrier`: wait until every
item before it was handled) and the close marker (:meth:`Worker.close`: handle the rest, call ``on_close``, stop).
Waiting polls a flag with ``time.sleep``, which takes no lock, so closing from a signal handler cannot deadlock. An
exception from ``handle`` never stops the thread: it is logged, counted and kept (:attr:`Worker.last_error`).

Example:
    >>> seen = []
    >>> w = Worker(seen.append)
    >>> w.start(); w.put(1); w.put(2)
    >>> w.barrier(5.0), seen
    (True, [1, 2])
    >>> w.close(5.0), w.finished
    (True, True)
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, List, Optional

__all__ = ["Barrier", "Worker", "wait_until"]

logger = logging.getLogger("spherewatch.writer")

_CLOSE = object()


class Barrier:
    """A marker: ``done`` once every item put before it was handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Poll ``done`` until ``timeout`` seconds passed: ``time.sleep`` takes no lock (safe in a signal handler)."""
    end = time.monotonic() + max(0.0, timeout)
    pause = 0.0005
    while not done():
        if time.monotonic() >= end:
            return done()
        time.sleep(pause)
        pause = min(0.01, pause * 2)
    return True


class Worker:
    """One background thread that hands queued items to ``handle``.

    Args:
        handle: called with each item on the thread.
        on_start: called first on the thread (e.g. open the sinks); an exception is logged and the thread goes on.
        on_idle: called when no item came for ``idle_timeout()`` seconds, and at each barrier (retries due).
        idle_timeout: how long to wait for an item before ``on_idle`` (default 1 s).
        on_close: called on the thread at the close marker, after every item before it.
        on_late: called with an item that arrives after :meth:`abandon` (e.g. spool it).
        name: the thread's name.
    """

    def __init__(self, handle: Callable[[Any], None], *, on_start: Optional[Callable[[], None]] = None,
                 on_idle: Optional[Callable[[], None]] = None, idle_timeout: Optional[Callable[[], float]] = None,
                 on_close: Optional[Callable[[], None]] = None, on_late: Optional[Callable[[Any], None]] = None,
                 name: str = "spherewatch-writer") -> None:
        self._handle, self._on_start, self._on_idle = handle, on_start, on_idle
        self._idle_timeout, self._on_close, self._on_late = idle_timeout, on_close, on_late
        self._name = name
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._at_exit: Optional[Callable[[], None]] = None
        self._close_put = False
        self.finished = False  #: the thread handled the close marker (or ``on_close`` raised)
        self.abandoned = False  #: :meth:`abandon` was called: the thread stops at its next item
        self.errors = 0  #: exceptions raised by the callbacks
        self.last_error: Optional[BaseException] = None
        self.busy = False  #: the training thread is in an evaluation (see :meth:`pause`)
        self.pid = os.getpid()  #: the process that owns the thread (a forked child does not: see :meth:`disown`)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, at_exit: Optional[Callable[[], None]] = None) -> None:
        """Start the thread (once); ``at_exit`` is called at interpreter exit unless :meth:`stop_at_exit` ran."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            if at_exit is not None:
                self._at_exit = at_exit
                atexit.register(self._exit)

    def stop_at_exit(self) -> None:
        """Forget the ``at_exit`` call (the owner closed)."""
        if self._at_exit is not None:
            self._at_exit = None
            atexit.unregister(self._exit)

    def disown(self) -> None:
        """In a forked child: the thread is the parent's (it does not run here); forget the exit call, take no item,
        wait for nothing."""
        self._at_exit = None
        self.abandoned = self.finished = True

    def _exit(self) -> None:
        if os.getpid() != self.pid:  # a forked child exits: the queue and the sinks are its parent's
            return
        try:
            if self._at_exit is not None:
                self._at_exit()
        except Exception:  # noqa: BLE001 - never fail the interpreter's exit
            logger.debug("spherewatch: closing the writer at exit failed.", exc_info=True)

    def put(self, item: Any) -> None:
        self._q.put(item)

    def qsize(self) -> int:
        return self._q.qsize()

    def barrier(self, timeout: float) -> bool:
        """Wait until every item put so far was handled (at most ``timeout`` seconds). True when done in time."""
        if self._thread is None or self.finished:
            return True
        self.busy = False  # whoever waits for the thread must not also hold it back
        barrier = Barrier()
        self._q.put(barrier)
        return wait_until(lambda: barrier.done, timeout)

    def close(self, timeout: float) -> bool:
        """Put the close marker (once) and wait at most ``timeout`` seconds for the thread to finish."""
        self.busy = False
        if not self._close_put:
            self._close_put = True
            self._q.put(_CLOSE)
        return wait_until(lambda: self.finished, timeout)

    def abandon(self) -> List[Any]:
        """Stop taking items: the items still queued (barriers released, markers left out), for the caller to keep."""
        self.abandoned = True
        left = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return left
            if isinstance(item, Barrier):
                item.done = True
            elif item is not _CLOSE:
                left.append(item)

    def pause(self) -> None:
        """Between two writes: let a waiting training thread take the GIL, and while it is in an evaluation
        (:attr:`busy`) wait for it (at most ~0.25 s), so that this thread's Python work does not compete with the
        step's many short torch calls."""
        time.sleep(0)
        if self.busy and not self._close_put:
            end = time.monotonic() + 0.25
            while self.busy and not self._close_put and time.monotonic() < end:
                time.sleep(0.0005)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
            self.errors += 1
            self.last_error = exc
            logger.error("spherewatch: the writer thread hit %s: %s; it goes on.", type(exc).__name__, exc,
                         exc_info=exc)

    def _run(self) -> None:
        if self._on_start is not None:
            self._call(self._on_start)
        while not self.abandoned:
            try:
                item = self._q.get(timeout=self._idle_timeout() if self._idle_timeout is not None else 1.0)
            except queue.Empty:
                if self._on_idle is not None:
                    self._call(self._on_idle)
                continue
            if self.abandoned:
                if self._on_late is not None and not isinstance(item, Barrier) and item is not _CLOSE:
                    self._call(self._on_late, item)
                break
            if isinstance(item, Barrier):
                if self._on_idle is not None:
                    self._call(self._on_idle)
                item.done = True
            elif item is _CLOSE:
                if self._on_close is not None:
                    self._call(self._on_close)
                self.finished = True
                return
            else:
                self._call(self._handle, item)

    def __repr__(self) -> str:
        return f"Worker(queued={self._q.qsize()}, finished={self.finished}, errors={self.errors})"
