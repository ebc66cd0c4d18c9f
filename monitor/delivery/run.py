"""What the writer thread does for one Monitor run: open its sinks in its spool folder, write each evaluation, take
the queue's overflow over, replay the folder's backlog and the spools of crashed runs, retry what is due, close.

A resumed run (``Monitor.load_state_dict``) carries the same ``run_key``: it takes its folder over and delivers the
backlog into its own sinks, before any new record. A run that finds another run's folder unlocked (that process
ended without delivering, e.g. SIGKILL) replays it into the sinks that folder's ``run.json`` names (the same MLflow
run, the same JSONL file or TensorBoard folder), once, then removes it -- on a thread of its own
(:mod:`spherewatch.delivery.orphans`), and only a folder that :mod:`spherewatch.delivery.trust` accepts.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from spherewatch.delivery import spool
from spherewatch.delivery.orphans import OrphanReplay
from spherewatch.delivery.record import Evaluation
from spherewatch.delivery.registry import SINKS
from spherewatch.delivery.sinkset import SinkSet
from spherewatch.delivery.spool import Overflow, RunFolder
from spherewatch.delivery.worker import Worker, wait_until

__all__ = ["OVERFLOW", "RunDelivery", "RunParams"]

logger = logging.getLogger("spherewatch.writer")

#: Queue marker: the overflow file holds records queued after everything before the marker.
OVERFLOW = object()
#: Evaluations queued for the remote sinks' thread before the writer thread waits for it (then this run's own
#: queue overflows to its spool folder, on disk).
REMOTE_QUEUE = 4096


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
        log_dir: the run's log folder (a crashed run's local files inside it count as this run's).
        replay_join_s: how long close() waits for the replay of crashed runs' folders.
    """

    def __init__(self, folder: RunFolder, specs: List[Dict[str, Any]], objects: Sequence[Any], faults: Any, *,
                 adopted: bool, strict: bool, retry: Tuple[float, float], pause: Optional[Callable[[], None]],
                 params: RunParams, overflow: Overflow,
                 finish: Optional[Callable[[Any], None]] = None, log_dir: Optional[str] = None,
                 replay_join_s: float = 2.0) -> None:
        self.folder, self._specs, self._objects, self._faults = folder, specs, list(objects), faults
        self._adopted, self._strict, self._retry, self._pause = adopted, strict, retry, pause
        self._params, self._overflow, self.finish = params, overflow, finish
        self.sinks: Optional[SinkSet] = None
        self._log_dir, self._replay_join_s = log_dir, float(replay_join_s)
        self.orphans: Optional[OrphanReplay] = None
        self.inflight: Optional[Tuple[Evaluation, set]] = None
        self.remote_inflight: Optional[Tuple[Evaluation, set]] = None
        self.abandoned = False
        self._run_file_lock = threading.Lock()
        self.lane: Optional[Worker] = None  #: the remote sinks' thread (none under strict or without such a sink)
        self._local: Optional[List[int]] = None
        self._remote: List[int] = []

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
        self._remote = self.sinks.remote if not self._strict else []
        if self._remote:  # a slow server never holds the local sinks' records back
            self._local = [i for i in range(len(self.sinks)) if i not in self._remote]
            self.lane = Worker(self._write_remote, on_idle=self._retry_remote, idle_timeout=self._remote_idle,
                               on_close=self._close_remote, on_late=self._late_remote, name="spherewatch-remote")
            self.lane.start()
        if self._adopted:  # our own overflow records from the earlier process, after the sinks' spooled backlog
            self.replay(self.folder.queue_files(exclude=self._overflow.gen), self.sinks)
        if not self._strict:  # crashed runs' folders: on their own thread, never before this run's records
            self.orphans = OrphanReplay(self.folder.root, self.folder.run_key, self._specs,
                                        [self._log_dir] if self._log_dir else [], retry=self._retry,
                                        pause=self._pause)
            self.orphans.start()

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
        with self._run_file_lock:  # the writer thread and the remote sinks' thread (an MLflow run it created)
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
        """Hand ``rec`` to this run's sinks, parameters not yet sent first: the local ones here, the remote ones on
        their own thread (:attr:`lane`)."""
        if self.sinks is None:
            return
        self.sinks.send_params(self._params.snapshot(), self._local)
        done: set = set()
        self.inflight = (rec, done)
        self.sinks.write(rec, done, slots=self._local)
        if self.lane is not None and (rec.only is None or any(i in rec.only for i in self._remote)):
            wait_until(lambda: self.lane.qsize() < REMOTE_QUEUE or self.abandoned or self.lane.finished, 1e9)
            self.lane.put(rec)
        self.inflight = None

    def _write_remote(self, rec: Evaluation) -> None:
        """The remote sinks' thread: hand ``rec`` to them."""
        self.sinks.send_params(self._params.snapshot(), self._remote)
        done: set = set()
        self.remote_inflight = (rec, done)
        self.sinks.write(rec, done, slots=self._remote)
        self.remote_inflight = None

    def _retry_remote(self) -> None:
        self.sinks.retry_due(time.monotonic(), self._remote)

    def _remote_idle(self) -> float:
        return _until(self.sinks.next_retry(self._remote))

    def _close_remote(self) -> None:
        self.sinks.send_params(self._params.snapshot(), self._remote)  # parameters given after the last record

    def _late_remote(self, item: Any) -> None:
        if isinstance(item, Evaluation):
            self._overflow.spill(self._restrict(item, set(), self._remote))

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
        inflight = self.remote_inflight if threading.current_thread().name == "spherewatch-remote" else self.inflight
        step = inflight[0].step if inflight is not None else None
        self._faults.report(part, exc, consequence, step=step)

    # ------------------------------------------------------------------ retries and crashed runs
    def idle_timeout(self) -> float:
        return _until(self.sinks.next_retry(self._local) if self.sinks else None)

    def retry_due(self) -> None:
        """Retry what is due: backlogs of failing sinks."""
        if self.sinks is not None:
            self.sinks.retry_due(time.monotonic(), self._local)

    def drain(self, timeout: float) -> bool:
        """Wait until the remote sinks' thread handed over every record the writer gave it (at most ``timeout``)."""
        return True if self.lane is None else self.lane.barrier(timeout)

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Send the last parameters, close this run's sinks, stop the crashed runs' replay (a bounded wait), release
        the folder."""
        if self.sinks is not None:
            try:
                self.sinks.send_params(self._params.snapshot(), self._local)  # parameters given after the last record
            except Exception:  # noqa: BLE001 - send_params logs its own failures
                pass
            if self.lane is not None:  # the remote sinks' records first (close() gives up at its deadline)
                self.lane.close(0.0)
                wait_until(lambda: self.lane.finished or self.abandoned, 1e9)
                if self.abandoned:
                    return
            self.sinks.close(self.finish)
        if self.orphans is not None and not self.orphans.stop(self._replay_join_s):
            logger.info("spherewatch: the replay of crashed runs' spools did not end within %.3gs; what it did not "
                        "deliver stays in their folders for the next run.", self._replay_join_s)
        self.folder.release()

    def missing(self) -> List[Evaluation]:
        """close() gave up: the evaluations not handed to every sink, each restricted to the sinks that lack it, in
        order (the remote sinks' in-flight and queued ones, then the writer's in-flight one)."""
        if self.sinks is None:
            return []
        out = []
        if self.lane is not None:
            inflight = self.remote_inflight
            if inflight is not None:
                out.append(self._restrict(inflight[0], inflight[1], self._remote))
            out += [self._restrict(rec, set(), self._remote) for rec in self.lane.abandon()
                    if isinstance(rec, Evaluation)]
        if self.inflight is not None:
            rec, done = self.inflight
            out.append(self._restrict(rec, done, range(len(self.sinks))))
        return [rec for rec in out if rec.only]

    @staticmethod
    def _restrict(rec: Evaluation, done: set, slots: Sequence[int]) -> Evaluation:
        only = tuple(i for i in slots if i not in done and (rec.only is None or i in rec.only))
        return Evaluation(rec.seq, rec.step, rec.time, rec.values, rec.hists, rec.alerts, only)


def _until(due: Optional[float]) -> float:
    """Seconds to wait for an item before the retry due at ``due`` (monotonic; at most 1 s)."""
    return 1.0 if due is None else min(1.0, max(0.01, due - time.monotonic()))
