"""What the writer thread does for one Monitor run: open its sinks in its spool folder, write each evaluation, take
the queue's overflow over, replay the folder's backlog and the spools of crashed runs, retry what is due, close.

A resumed run (``Monitor.load_state_dict``) carries the same ``run_key``: it takes its folder over and delivers the
backlog into its own sinks, before any new record. A run that finds another run's folder unlocked (that process
ended without delivering, e.g. SIGKILL) replays it into the sinks that folder's ``run.json`` names (the same MLflow
run, the same JSONL file or TensorBoard folder), once, then removes it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from spherewatch.delivery import spool
from spherewatch.delivery.record import Evaluation
from spherewatch.delivery.registry import SINKS
from spherewatch.delivery.sinkset import SinkSet
from spherewatch.delivery.spool import Overflow, RunFolder

__all__ = ["OVERFLOW", "RunDelivery", "RunParams"]

logger = logging.getLogger("spherewatch.writer")

#: Queue marker: the overflow file holds records queued after everything before the marker.
OVERFLOW = object()


class RunParams:
    """Run parameters: set on the training thread, read by the writer thread (a snapshot) before each record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._params: Dict[str, Any] = {}

    def update(self, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._params.update({str(k): v for k, v in params.items()})

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return dict(self._params)


class _Orphan:
    """Another run's spool folder, unlocked (its process is gone): replayed into the sinks it names, then removed."""

    def __init__(self, folder: RunFolder, sinks: SinkSet) -> None:
        self.folder, self.sinks = folder, sinks


class RunDelivery:
    """The writer thread's side of a :class:`~spherewatch.delivery.writer.RecordWriter` (see the module docstring).

    Args:
        folder: the run's spool folder (its ``run_key`` may change when another live process holds it).
        specs: one spec per sink (registry specs, ``{"name": ..., "object": True}`` for ``objects``).
        objects: the sink objects handed over.
        faults: ``report(part, exc, consequence, step=...)`` and ``recovered(part)``.
        adopted: the run key came from a saved state (an earlier process's folder and MLflow run).
        strict: no thread: failures raise (through ``faults``).
        retry: the sinks' backoff ``(initial, max)`` in seconds.
        pause: between two writes (yield to the training thread); ``None`` under strict.
        params: the run parameters (sent to the sinks that keep them, once each).
        finish: called with each own sink that takes artifacts, before it is closed (the report).
    """

    def __init__(self, folder: RunFolder, specs: List[Dict[str, Any]], objects: Sequence[Any], faults: Any, *,
                 adopted: bool, strict: bool, retry: Tuple[float, float], pause: Optional[Callable[[], None]],
                 params: RunParams, overflow: Overflow,
                 finish: Optional[Callable[[Any], None]] = None) -> None:
        self.folder, self._specs, self._objects, self._faults = folder, specs, list(objects), faults
        self._adopted, self._strict, self._retry, self._pause = adopted, strict, retry, pause
        self._params, self._overflow, self.finish = params, overflow, finish
        self.sinks: Optional[SinkSet] = None
        self._orphans: List[_Orphan] = []
        self.inflight: Optional[Tuple[Evaluation, set]] = None
        self.abandoned = False

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        """Lock the folder, open the sinks (local ones at once), replay this run's own backlog and crashed runs'."""
        if self.sinks is not None:
            return
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - never die: a writer without sinks still drains its queue
            logger.error("spherewatch: the writer could not set up its sinks (%s: %s).", type(exc).__name__, exc,
                         exc_info=exc)

    def _open(self) -> None:
        self._lock()
        saved = self.folder.read_sinks() if self._adopted else []
        for i, spec in enumerate(self._specs):
            entry = SINKS.get(spec.get("name", ""))
            if spec.get("object") or entry is None or entry.resume is None:
                continue
            old = saved[i] if i < len(saved) and isinstance(saved[i], dict) and saved[i].get("name") == spec["name"] \
                else {}
            spec.update(entry.resume(spec, old, self._adopted))
        self.sinks = SinkSet(self._specs, self._objects, self.folder, report=self.report, strict=self._strict,
                             retry=self._retry, pause=self._pause, recovered=self._faults.recovered,
                             on_spec=self.save_run_file)
        self.sinks.open_local()
        self.save_run_file()
        if self._adopted:  # our own overflow records from the earlier process, after the sinks' spooled backlog
            self.replay(self.folder.queue_files(exclude=self._overflow.gen), self.sinks)
        if not self._strict:
            self._find_orphans()

    def _lock(self) -> None:
        try:
            locked = self.folder.lock()
        except OSError as exc:
            logger.warning("spherewatch: cannot lock the spool folder %s (%s: %s); spooling goes on unlocked.",
                           self.folder.path, type(exc).__name__, exc)
            return
        if not locked:  # a live process writes this run (the same state loaded twice)
            old = self.folder.run_key
            self.folder.run_key, self._adopted = uuid.uuid4().hex[:16], False
            logger.warning("spherewatch: the spool folder of run %s is in use by another process; this monitor "
                           "spools to %s instead.", old, self.folder.path)
            for spec in self._specs:
                if "run_key" in spec:
                    spec["run_key"] = self.folder.run_key
            self.folder.lock()

    def save_run_file(self) -> None:
        self.folder.write_sinks(self._specs)

    # ------------------------------------------------------------------ writing
    def handle(self, item: Any) -> None:
        """One queue item: an evaluation, or the overflow marker."""
        if self.sinks is None:
            return
        if item is OVERFLOW:
            taken = self._overflow.take()
            if taken is not None:
                self.replay([taken], self.sinks)
        else:
            self.write(item)

    def write(self, rec: Evaluation) -> None:
        """Hand ``rec`` to this run's sinks, parameters not yet sent first."""
        if self.sinks is None:
            return
        self.sinks.send_params(self._params.snapshot())
        done: set = set()
        self.inflight = (rec, done)
        self.sinks.write(rec, done)
        self.inflight = None

    def replay(self, paths: Sequence[str], sinks: Optional[SinkSet]) -> None:
        """Write the evaluations of overflow files into ``sinks``, marking progress, then remove the files."""
        for path in paths:
            records = spool.load_queue_file(path)
            if records is None:  # a newer format: left in place
                continue
            for rec in records:
                if self.abandoned or sinks is None:
                    return
                if sinks is self.sinks:
                    self.write(rec)
                else:
                    if self._pause is not None:
                        self._pause()
                    sinks.write(rec, flush=False)
                spool.mark_done(path, rec.seq)
            spool.remove_queue_file(path)

    def report(self, part: str, exc: BaseException, consequence: str) -> None:
        """Report to the Monitor, at the step of the record being written (may raise under strict)."""
        step = self.inflight[0].step if self.inflight is not None else None
        self._faults.report(part, exc, consequence, step=step)

    # ------------------------------------------------------------------ retries and crashed runs
    def idle_timeout(self) -> float:
        due = [r for r in [self.sinks.next_retry() if self.sinks else None]
               + [o.sinks.next_retry() for o in self._orphans] if r is not None]
        if not due:
            return 1.0
        return min(1.0, max(0.01, min(due) - time.monotonic()))

    def retry_due(self) -> None:
        """Retry what is due: backlogs of failing sinks, crashed runs' replays."""
        now = time.monotonic()
        if self.sinks is not None:
            self.sinks.retry_due(now)
        for orphan in list(self._orphans):
            orphan.sinks.flush()
            if orphan.sinks.pending() == 0:
                self._finish_orphan(orphan)

    def _find_orphans(self) -> None:
        for folder in spool.other_runs(self.folder.root, self.folder.run_key):
            try:
                if not folder.lock():
                    continue  # a live run: never touch its spool
            except OSError:
                continue
            specs: List[Dict[str, Any]] = []
            for spec in folder.read_sinks():
                entry = SINKS.get(spec.get("name", "")) if isinstance(spec, dict) else None
                if entry is None or spec.get("object") or not entry.rebuildable:
                    specs.append({"name": None})  # replayed into nothing: only its own run can rebuild it
                    continue
                specs.append(entry.resume(dict(spec), {}, True) if entry.resume is not None else dict(spec))
            sinks = SinkSet(specs, [], folder, retry=self._retry, pause=self._pause)
            unknown = folder.foreign_spools(sinks.spool_paths)
            logger.info("spherewatch: found the spool of run %s (its process ended before delivering it) in %s; "
                        "replaying it into that run's sinks.", folder.run_key, folder.path)
            self.replay(folder.queue_files(), sinks)
            if unknown:
                logger.warning("spherewatch: %s holds records of sink objects that only their own run can rebuild "
                               "(%s); left in place.", folder.path, ", ".join(unknown))
            self._orphans.append(_Orphan(folder, sinks))

    def _finish_orphan(self, orphan: _Orphan) -> None:
        self._orphans.remove(orphan)
        orphan.sinks.close(self.finish)
        if orphan.folder.release():
            logger.info("spherewatch: delivered the spool of run %s.", os.path.basename(orphan.folder.path))

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Send the last parameters, close every sink (this run's, crashed runs'), release the folder."""
        if self.sinks is not None:
            try:
                self.sinks.send_params(self._params.snapshot())  # parameters given after the last record
            except Exception:  # noqa: BLE001 - send_params logs its own failures
                pass
            self.sinks.close(self.finish)
        for orphan in list(self._orphans):
            if orphan.sinks.pending() == 0:
                self._finish_orphan(orphan)  # delivered: its folder goes
            else:
                orphan.sinks.close()
                orphan.folder.let_go()
        self._orphans = []
        self.folder.release()

    def missing(self) -> Optional[Evaluation]:
        """The evaluation being written, restricted to the sinks that lack it (``None``: nothing in flight)."""
        if self.inflight is None or self.sinks is None:
            return None
        rec, done = self.inflight
        missing = tuple(i for i in range(len(self.sinks)) if i not in done)
        if not missing:
            return None
        return Evaluation(rec.seq, rec.step, rec.time, rec.values, rec.hists, rec.alerts, missing)
