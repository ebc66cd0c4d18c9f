"""Replaying crashed runs' spool folders on a thread of its own, so that it never delays this run's records.

A run that finds another run's folder unlocked under its spool root (that process ended without delivering, e.g.
SIGKILL) replays it into the sinks that folder's ``run.json`` names, once, then removes it -- when the folder passes
:mod:`spherewatch.delivery.trust` (this user's, the monitor's own files, a destination this run writes to). The
writer thread never waits for it: the replay has its own thread (``spherewatch-replay``), started after this run's
sinks are set up, and a destination that is down (an MLflow server and its client's own retries) holds only that
thread. At close the writer gives it a bounded time (``join_s``); what is not delivered by then stays in its folder
for the next run. A run that finds no folder starts and ends the thread at once.

Example:
    >>> import tempfile
    >>> replay = OrphanReplay(tempfile.mkdtemp(), "own", [], [], retry=(1.0, 60.0))
    >>> replay.start(); replay.stop(5.0)
    True
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from spherewatch.delivery import spool, trust
from spherewatch.delivery.registry import SINKS
from spherewatch.delivery.sinkset import SinkSet
from spherewatch.delivery.spool import RunFolder

__all__ = ["OrphanReplay"]

logger = logging.getLogger("spherewatch.writer")


class OrphanReplay:
    """The crashed runs' folders of one spool root, replayed on their own thread (see the module docstring).

    Args:
        root: the spool root.
        own_key: this run's key (its folder is never replayed here).
        own_specs: this run's sink specs (read when the thread scans: a destination must be one of these).
        dirs: folders whose files count as this run's (its log folder; the spool root is added).
        retry: the sinks' backoff ``(initial, max)`` in seconds.
        pause: called between two records (yields to the training thread).
    """

    def __init__(self, root: str, own_key: str, own_specs: Sequence[Dict[str, Any]], dirs: Sequence[str], *,
                 retry: Tuple[float, float], pause: Optional[Callable[[], None]] = None) -> None:
        self.root, self.own_key, self._own, self._retry, self._pause = root, own_key, own_specs, retry, pause
        self._dirs = [*dirs, root]
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._active: List[Tuple[RunFolder, SinkSet]] = []
        self.delivered: List[str] = []  #: folders delivered and removed
        self.refused: List[str] = []  #: folders left untouched (not trusted)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spherewatch-replay", daemon=True)
            self._thread.start()

    def stop(self, join_s: float) -> bool:
        """Let the thread go on for at most ``join_s`` seconds, then ask it to stop (after its current call) and wait
        a moment more. True when it ended: every folder is then delivered and removed, or closed and let go with its
        backlog on disk."""
        if self._thread is None:
            self._stop.set()
            return True
        self._thread.join(max(0.0, join_s))
        self._stop.set()
        self._thread.join(0.2)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self._scan()
            while self._active and not self._stop.is_set():
                for folder, sinks in list(self._active):
                    self._call(sinks.flush)
                    if sinks.pending() == 0:
                        self._finish(folder, sinks)
                due = [r for r in (s.next_retry() for _, s in self._active) if r is not None]
                wait = 1.0 if not due else min(1.0, max(0.01, min(due) - time.monotonic()))
                self._stop.wait(wait)
        except Exception as exc:  # noqa: BLE001 - a replay never takes the run down
            logger.error("spherewatch: replaying crashed runs' spools failed (%s: %s).", type(exc).__name__, exc,
                         exc_info=exc)
        finally:
            for folder, sinks in list(self._active):
                if sinks.pending() == 0:
                    self._finish(folder, sinks)
                else:
                    self._call(sinks.close)
                    folder.let_go()
            self._active = []

    def _scan(self) -> None:
        for folder in spool.other_runs(self.root, self.own_key):
            if self._stop.is_set():
                return
            why = trust.check_folder(folder.path, self.root)
            specs = None
            if why is None:
                specs, why = trust.trusted_specs(folder.read_sinks(), list(self._own), self._dirs,
                                                 lambda name: name in SINKS and SINKS[name].rebuildable)
            if specs is None:
                self.refused.append(folder.path)
                trust.refuse_once(folder.path, why)
                continue
            try:
                if not folder.lock():
                    continue  # a live run: never touch its spool
            except OSError:
                continue
            sinks = SinkSet(specs, [], folder, retry=self._retry, pause=self._pause)
            unknown = folder.foreign_spools(sinks.spool_paths)
            logger.info("spherewatch: found the spool of run %s (its process ended before delivering it) in %s; "
                        "replaying it into that run's sinks.", folder.run_key, folder.path)
            self._active.append((folder, sinks))
            self._replay(folder.queue_files(), sinks)
            if unknown:
                logger.warning("spherewatch: %s holds records of sink objects that only their own run can rebuild "
                               "(%s); left in place.", folder.path, ", ".join(unknown))

    def _replay(self, paths: Sequence[str], sinks: SinkSet) -> None:
        for path in paths:
            records = spool.load_queue_file(path)
            if records is None:  # a newer format: left in place
                continue
            for rec in records:
                if self._stop.is_set():
                    return
                if self._pause is not None:
                    self._pause()
                sinks.write(rec, flush=False)
                spool.mark_done(path, rec.seq)
            spool.remove_queue_file(path)

    def _finish(self, folder: RunFolder, sinks: SinkSet) -> None:
        if (folder, sinks) in self._active:
            self._active.remove((folder, sinks))
        self._call(sinks.close)
        if folder.release():
            self.delivered.append(folder.path)
            logger.info("spherewatch: delivered the spool of run %s.", os.path.basename(folder.path))

    @staticmethod
    def _call(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a replay's sinks log their own failures
            logger.debug("spherewatch: replaying into a crashed run's sink failed.", exc_info=True)

    def __repr__(self) -> str:
        return f"OrphanReplay({self.root!r}, active={len(self._active)}, refused={len(self.refused)})"
