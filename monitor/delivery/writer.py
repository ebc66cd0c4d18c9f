"""One background writer per Monitor: every sink call happens on its thread, never on the training thread.

The training thread hands each evaluation's values, spectra and alerts to :meth:`RecordWriter.submit`, which only
puts an :class:`~spherewatch.delivery.record.Evaluation` on the :class:`~spherewatch.delivery.worker.Worker`'s
queue (when it holds ``max_queue`` records, the record goes to the run's overflow file instead: never dropped). The
writer thread (:class:`~spherewatch.delivery.run.RunDelivery`) opens the sinks, writes, flushes, spools and replays.
A sink that cannot be opened (a tracking server not up yet, a log folder that is not writable) is retried with
backoff like a sink that fails later, its records spooled meanwhile; none is ever disabled for being down. The spool
folder's layout is in :mod:`spherewatch.delivery.spool`.

Threads and host writers (why writing from the writer thread is safe):

* ``SummaryWriter.add_scalar/add_histogram/add_text`` (torch and tensorboardX; Lightning's ``TensorBoardLogger``
  writer, Hugging Face's ``tb_writer``) only put events on the writer's own thread-safe queue, drained by its own
  thread; ``flush`` waits for that queue. Calling them from this thread while the host logs from the training
  thread is what they are built for.
* ``MlflowClient`` calls with an explicit ``run_id`` hold no fluent (thread-local) state: safe from any thread. The
  host's active run (``mlflow.active_run()``, thread-local in MLflow) is looked up on the training thread, at the
  first :meth:`RecordWriter.submit`, and passed to the sink as its ``run_id``.
* ``close()`` is safe from a signal handler: it puts a marker on a ``queue.SimpleQueue`` (re-entrant by design) and
  polls a flag with ``time.sleep``; it never takes a lock that the interrupted code could hold.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from spherewatch import distributed as dist_utils
from spherewatch.delivery.record import Evaluation
from spherewatch.delivery.registry import SINK_NAMES, check_sink_names, sink_spec
from spherewatch.delivery.run import OVERFLOW, RunDelivery, RunParams
from spherewatch.delivery.spool import Overflow, RunFolder
from spherewatch.delivery.worker import Worker
from spherewatch.forks import disown_in_forked_child
from spherewatch.keys import config_params

__all__ = ["RecordWriter", "split_sink_args"]

logger = logging.getLogger("spherewatch.writer")

_SINK_METHODS = ("log_scalars", "log_histogram", "log_alert", "flush", "close")


def split_sink_args(sinks: Optional[Sequence[Any]], overrides: Dict[str, Any]) -> List[Any]:
    """Sink names go to the ``sinks`` config field (in ``overrides``); sink objects are checked and returned.

    Example:
        >>> from spherewatch.sinks import MemorySink
        >>> overrides = {}
        >>> objects = split_sink_args(("jsonl", MemorySink()), overrides)
        >>> overrides, [type(s).__name__ for s in objects]
        ({'sinks': ('jsonl',)}, ['MemorySink'])
    """
    if sinks is None:
        return []
    if isinstance(sinks, str):
        sinks = (sinks,)
    names = tuple(s for s in sinks if isinstance(s, str))
    objects = [s for s in sinks if not isinstance(s, str)]
    for obj in objects:  # a bad object would otherwise fail at the first write and take every sink with it
        missing = [m for m in _SINK_METHODS if not callable(getattr(obj, m, None))]
        if missing:
            raise TypeError(
                f"Expected sink names ({', '.join(repr(n) for n in SINK_NAMES)}) or sink objects with "
                f"{', '.join(_SINK_METHODS)} (see spherewatch.sinks.Sink); {type(obj).__name__} lacks "
                f"{', '.join(missing)}."
            )
    if names or not objects:
        overrides["sinks"] = names
    return objects


class RecordWriter:
    """Hands every record to the sinks on one background thread (rank zero only); see the module docstring.

    Args:
        config: the :class:`~spherewatch.MonitorConfig` (sinks, log_dir, jsonl_path, tracking_uri, run_id,
            experiment_name, run_name, spool_dir, close_timeout, strict).
        extra_sinks: sink objects handed over by the user or the host (a host's ``SummaryWriter`` inside a
            :class:`~spherewatch.sinks.TensorBoardSink`, an ``MLflowSink`` on the host's run).
        faults: where failures are reported: ``report(part, exc, consequence, step=None)`` and ``recovered(part)``.
            Called from the writer thread.
        max_queue: records held in memory before they overflow to the spool folder.
        retry_initial, retry_max: the backoff of a failing sink (seconds, doubling).

    Under ``strict`` there is no thread: records are written on the caller's thread so that a failure raises at the
    step that caused it (tests, debugging).

    Raises:
        ModuleNotFoundError, ValueError: see :func:`~spherewatch.delivery.registry.check_sink_names`.
    """

    def __init__(self, config: Any, extra_sinks: List[Any], faults: Any, *, max_queue: int = 256,
                 retry_initial: float = 1.0, retry_max: float = 60.0) -> None:
        self.config = config
        self._objects = list(extra_sinks)
        self._faults = faults
        names = config.sinks if config.sinks is not None else (() if self._objects else ("jsonl",))
        held = {getattr(o, "name", None) for o in self._objects}
        for channel in getattr(config, "alert_channels", None) or ():  # an alert channel is delivered by its sink
            if channel not in names and channel not in held:
                names = (*names, channel)
        # a W&B/trackio run handed over by the host (an adapter) is the run the named sink would join: once only
        names = tuple(n for n in names if not (n in ("wandb", "trackio") and n in held))
        check_sink_names(names, config.tracking_uri, config)
        self._names = tuple(names)
        self._max_queue = int(max_queue)
        self._retry = (float(retry_initial), float(retry_max))
        self._inline = bool(config.strict)
        self._folder = RunFolder(config.spool_dir or os.path.join(config.log_dir, "spool"), uuid.uuid4().hex[:16])
        self._adopted = False  # run_key came from a saved state: the folder (and MLflow run) of an earlier process
        self._run: Optional[RunDelivery] = None  # made at the first submit (specs: training thread)
        # the thread's callbacks are the run's (made before the thread starts)
        self._worker = Worker(lambda item: self._run.handle(item), on_start=lambda: self._run.open(),
                              on_idle=lambda: self._run.retry_due(), idle_timeout=lambda: self._run.idle_timeout(),
                              on_close=lambda: self._run.close(), on_late=self._late)
        self._overflow = Overflow(self._folder, on_start=lambda: self._worker.put(OVERFLOW))
        self._seq = 0
        self._closing = self._closed = self._dumped = False
        self._params = RunParams()  # sent by the writer thread before its next record, once per sink
        self._config_logged = False
        disown_in_forked_child(self)

    # ------------------------------------------------------------------ state (resume = the same run)
    @property
    def run_key(self) -> str:
        return self._folder.run_key

    @property
    def folder(self) -> str:
        """This run's spool folder."""
        return self._folder.path

    def state_dict(self) -> Dict[str, Any]:
        return {"run_key": self.run_key}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the saved run: the same spool folder, and the same MLflow run when this writer created it."""
        key = state.get("run_key") if isinstance(state, Mapping) else None
        if not key or key == self.run_key:
            return
        if self._run is not None:
            logger.warning("spherewatch: load_state_dict after the first evaluation was written: the records already "
                           "written stay in run %s; call load_state_dict before training to continue run %s.",
                           self.run_key, key)
            return
        self._folder.run_key, self._adopted = str(key), True

    # ------------------------------------------------------------------ training thread
    def submit_params(self, params: Mapping[str, Any]) -> None:
        """Run parameters for every sink that keeps them (``supports_params``: MLflow params, a TensorBoard text and
        HParams, a JSONL record); sent by the writer thread with the next record, once per sink (rank zero only)."""
        if self._closing or dist_utils.rank() != 0:
            return
        self._params.update(params)

    def submit(self, step: int, values: Dict[str, float], hists: Dict[str, List[float]], alerts: List[Any]) -> None:
        """Queue one evaluation's records for the sinks; returns at once (rank zero only; elsewhere a no-op). The
        configuration goes out as run parameters with the first record."""
        if self._closing or dist_utils.rank() != 0:
            return
        if not self._config_logged:
            self._config_logged = True
            self.submit_params(config_params(self.config))
        run = self._prepare()
        rec = Evaluation(self._seq, int(step), time.time(), dict(values), dict(hists), list(alerts))
        self._seq += 1
        if self._inline:
            run.open()
            run.write(rec)
            return
        self._start()
        if self._overflow.active or self._worker.qsize() >= self._max_queue:
            with self._overflow.lock:
                if (self._overflow.active or self._worker.qsize() >= self._max_queue) and self._overflow.spill(rec):
                    return
        self._worker.put(rec)

    def hold(self, busy: bool) -> None:
        """The training thread is in (``True``) or out of an evaluation: the writer waits between two writes while it
        is in one (at most ~0.25 s), so that its Python work (encoding, replaying a backlog) does not compete for the
        GIL with the step's many short torch calls."""
        self._worker.busy = busy

    # ------------------------------------------------------------------ sinks, flush, close (any thread)
    @property
    def sinks(self) -> List[Any]:
        """The sinks (inner sink of each resilient wrapper; an unopened sink is its opener), once the records
        submitted so far were written (waits at most ``close_timeout``)."""
        if dist_utils.rank() != 0:
            return []
        run = self._prepare()
        if self._inline:
            run.open()
        elif not self._closing:
            self._start()
            self.flush()
        return run.sinks.sinks if run.sinks is not None else []

    def sink(self, name: str) -> Any:
        """The first sink whose ``name`` is ``name``."""
        sinks = self.sinks
        for s in sinks:
            if getattr(s, "name", None) == name:
                return s
        raise KeyError(f"No {name!r} sink; open ones: {[getattr(s, 'name', type(s).__name__) for s in sinks]}.")

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every record submitted so far was handed to the sinks (and they flushed), at most ``timeout``
        seconds (default ``close_timeout``). True when done in time."""
        if self._inline:
            if self._run is not None and self._run.sinks is not None:
                self._run.sinks.flush()
            return True
        limit = float(self.config.close_timeout if timeout is None else timeout)
        end = time.monotonic() + limit
        if not self._worker.barrier(limit):
            return False
        return self._run is None or self._run.drain(max(0.0, end - time.monotonic()))

    def close(self, timeout: Optional[float] = None, finish: Optional[Callable[[Any], None]] = None) -> None:
        """Drain the queue into the sinks and close them, for at most ``timeout`` seconds (default the config's
        ``close_timeout``); what is left stays in the spool folder, named in a log line, for the next run. Idempotent,
        and safe from a signal handler (see the module docstring).

        Args:
            finish: called on the writer thread with each sink this writer opened itself (not an object handed over)
                that takes artifacts (``supports_artifacts``), its records all delivered, just before it is closed
                (the Monitor attaches the run's report).
        """
        if self._closed:
            return
        self._closing = True
        if self._run is not None and finish is not None:
            self._run.finish = finish
        if self._inline or not self._worker.started:
            self._closed = True
            if self._run is not None:
                self._run.close()
            self._worker.stop_at_exit()
            return
        deadline = float(self.config.close_timeout if timeout is None else timeout)
        if not self._worker.close(deadline) and not self._dumped:
            self._dumped = True
            left = self._dump_leftovers()
            self._folder.let_go()  # the folder is the next run's to replay now (this one is done with it)
            logger.warning(
                "spherewatch: close() waited %.3gs (close_timeout) for the sinks; %d record(s) still queued are kept in "
                "the spool folder %s with the sinks' own backlog. The next Monitor using that spool folder delivers "
                "them, once, into this run's sinks (a resumed run: before its own records).", deadline, left,
                self.folder,
            )
        if self._worker.finished or self._dumped:
            self._closed = True
            self._worker.stop_at_exit()

    def __repr__(self) -> str:
        return (f"RecordWriter(run_key={self.run_key!r}, sinks={list(self._names)}, queued={self._worker.qsize()}, "
                f"errors={self._worker.errors}, spool={self.folder!r})")

    def disown(self) -> None:
        """In a forked child (``os.fork`` after records were queued): the queue, the sinks and the spool folder are
        the parent's. The child's copy writes nothing, spools nothing, closes its copy of the folder's lock (the lock
        stays the parent's) and ends at once at exit."""
        self._closing = self._closed = self._dumped = True
        self._worker.disown()
        self._folder.disown()

    # ------------------------------------------------------------------ internals
    def _prepare(self) -> RunDelivery:
        """What each configured sink is, decided on the training thread (MLflow's active run is thread-local)."""
        if self._run is None:
            specs = [sink_spec(name, self.config, self.run_key) for name in self._names]
            specs += [{"name": getattr(obj, "name", type(obj).__name__), "object": True} for obj in self._objects]
            self._run = RunDelivery(self._folder, specs, self._objects, self._faults, adopted=self._adopted,
                                    strict=self._inline, retry=self._retry,
                                    pause=None if self._inline else self._worker.pause, params=self._params,
                                    overflow=self._overflow, log_dir=self.config.log_dir)
        return self._run

    def _late(self, item: Any) -> None:
        """An evaluation the writer took after close() gave up on it: into the overflow file."""
        if isinstance(item, Evaluation):
            self._overflow.spill(item)

    def _dump_leftovers(self) -> int:
        """close() timed out: put the in-flight record (for the sinks that lack it) and the queue in the spool."""
        n = 0
        with self._overflow.lock:
            if self._run is not None:
                self._run.abandoned = True
                for missing in self._run.missing():
                    n += self._overflow.spill(missing)
            for item in self._worker.abandon():
                if isinstance(item, Evaluation):
                    n += self._overflow.spill(item)
            self._overflow.sync()
        return n

    def _start(self) -> None:
        self._worker.start(at_exit=self.close)
