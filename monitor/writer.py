"""One background writer per Monitor: every sink call happens on its thread, never on the training thread.

The training thread hands each evaluation's values, spectra and alerts to :meth:`RecordWriter.submit`, which only
puts a record on a bounded in-memory queue (when the queue is full, the record is appended to an on-disk overflow
file instead: never dropped). The writer thread opens the sinks, writes, flushes, spools and replays. A sink that
cannot be opened (a tracking server not up yet, a log folder that is not writable) is retried with backoff like a
sink that fails later, its records spooled meanwhile; none is ever disabled for being down.

Spool folder layout (``<spool_dir>/<run_key>/``, one folder per Monitor run, locked by the process that owns it)::

    run.json                      what each sink is (name, log_dir / path / tracking URI, MLflow run id)
    <sink>-<i>.spool.jsonl        records sink i could not take yet (ResilientSink's spool)
    queue-<gen>.spool.jsonl       records that overflowed the in-memory queue (or were left at close)
    queue-<gen>.done              sequence number of the last overflow record handed to the sinks

A resumed run (``Monitor.load_state_dict``) carries the same ``run_key``: it takes its folder over and delivers the
backlog into its own sinks, before any new record. A run that finds another run's folder unlocked (that process
ended without delivering, e.g. SIGKILL) replays it into the sinks that folder names (the same MLflow run, the same
JSONL file or TensorBoard folder), once, then removes it.

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

import atexit
import importlib.util
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from spherewatch import distributed as dist_utils
from spherewatch.sinks.base import Sink
from spherewatch.sinks.jsonl import decode_float, dumps_line, encode_float, make_private_dirs, write_all

__all__ = ["RecordWriter", "check_sink_names", "split_sink_args"]

logger = logging.getLogger("spherewatch.writer")

_SINK_NAMES = ("tensorboard", "mlflow", "jsonl", "memory")
_SINK_METHODS = ("log_scalars", "log_histogram", "log_alert", "flush", "close")


def split_sink_args(sinks: Optional[Sequence[Any]], overrides: Dict[str, Any]) -> List[Any]:
    """Sink names go to the ``sinks`` config field; sink objects are checked and returned."""
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
                f"Expected sink names ('tensorboard', 'mlflow', 'jsonl', 'memory') or sink objects with "
                f"{', '.join(_SINK_METHODS)} (see spherewatch.sinks.Sink); {type(obj).__name__} lacks "
                f"{', '.join(missing)}."
            )
    if names or not objects:
        overrides["sinks"] = names
    return objects

_RUN_FILE = "run.json"
_LOCK_FILE = ".lock"
_QUEUE_PREFIX = "queue-"
_QUEUE_SUFFIX = ".spool.jsonl"


# ---------------------------------------------------------------------------------------------------------- records
class _Record:
    """One evaluation's output: scalars, spectra and alerts of one step (``only``: restrict to these sinks)."""

    __slots__ = ("alerts", "hists", "only", "seq", "step", "time", "values")

    def __init__(self, seq: int, step: int, wall: float, values: Dict[str, float], hists: Dict[str, List[float]],
                 alerts: List[Any], only: Optional[Sequence[int]] = None) -> None:
        self.seq, self.step, self.time = seq, step, wall
        self.values, self.hists, self.alerts = values, hists, alerts
        self.only = None if only is None else tuple(only)

    def line(self) -> bytes:
        alerts = []
        for a in self.alerts:
            d = a.to_dict()
            d["value"] = encode_float(d["value"])
            alerts.append(d)
        record = {
            "seq": self.seq, "step": self.step, "time": self.time,
            "values": {k: encode_float(v) for k, v in self.values.items()},
            "hists": {k: [encode_float(x) for x in v] for k, v in self.hists.items()},
            "alerts": alerts,
        }
        if self.only is not None:
            record["only"] = list(self.only)
        return dumps_line(record)

    @classmethod
    def parse(cls, raw: bytes) -> "_Record":
        from spherewatch.alerts.alert import Alert

        d = json.loads(raw)
        alerts = []
        for a in d.get("alerts", []):
            a = dict(a)
            a["value"] = decode_float(a.get("value"))
            alerts.append(Alert.from_dict(a))
        return cls(int(d["seq"]), int(d["step"]), float(d["time"]),
                   {str(k): decode_float(v) for k, v in d.get("values", {}).items()},
                   {str(k): [decode_float(x) for x in v] for k, v in d.get("hists", {}).items()},
                   alerts, d.get("only"))


class _Barrier:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


_CLOSE = object()
_OVERFLOW = object()


# ------------------------------------------------------------------------------------------------ sink construction
def check_sink_names(names: Sequence[str], tracking_uri: Optional[str]) -> None:
    """Validate the configured sinks without opening anything (no file, no network): a missing extra or a tracking
    URI MLflow cannot use fails here, at construction, with the fix.

    Raises:
        ModuleNotFoundError: ``tensorboard`` or ``mlflow`` is configured but not installed.
        ValueError: an unknown sink name, or a tracking URI with an unknown scheme.
    """
    for name in names:
        if name not in _SINK_NAMES:
            raise ValueError(f"Unknown sink {name!r}; use one of: {', '.join(_SINK_NAMES)}.")
        if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ModuleNotFoundError("TensorBoardSink needs `tensorboard`: pip install 'spherewatch[tensorboard]'.")
        if name == "mlflow":
            if importlib.util.find_spec("mlflow") is None:
                raise ModuleNotFoundError("MLflowSink needs `mlflow`: pip install 'spherewatch[mlflow]'.")
            from spherewatch.sinks.mlflow import check_tracking_uri

            check_tracking_uri(tracking_uri)


def _build_sink(name: str, spec: Mapping[str, Any]) -> Sink:
    """Open the sink ``spec`` describes (on the writer thread; may do file or network I/O and raise)."""
    if name == "tensorboard":
        from spherewatch.sinks.tensorboard import TensorBoardSink

        return TensorBoardSink(spec["log_dir"], prefix=spec.get("prefix", "spherewatch"))
    if name == "mlflow":
        from spherewatch.sinks.mlflow import MLflowSink

        sink = MLflowSink(spec.get("tracking_uri"), run_id=spec.get("run_id"),
                          experiment_name=spec.get("experiment_name"), run_name=spec.get("run_name"),
                          prefix=spec.get("prefix", "spherewatch"), run_key=spec.get("run_key"),
                          find_run=bool(spec.get("find_run")))
        sink.report_artifacts = True  # a run the Monitor logs to itself: the report's HTML and PNGs at close()
        if spec.get("run_id") and spec.get("created_run"):
            sink.created_run = True  # a run this Monitor run created earlier: end it at close, like its creator would
        return sink
    if name == "jsonl":
        from spherewatch.sinks.jsonl import JsonlSink

        return JsonlSink(spec["path"])
    if name == "memory":
        from spherewatch.sinks.memory import MemorySink

        return MemorySink()
    raise ValueError(f"Unknown sink {name!r}; use one of: {', '.join(_SINK_NAMES)}.")


class _OpeningSink(Sink):
    """A sink opened at its first call, on the writer thread. Failing to open is a transient error (raised to the
    :class:`~spherewatch.sinks.ResilientSink` around it, which spools and retries with backoff): the configuration
    was validated at construction, so a sink that cannot open is down, not wrong."""

    def __init__(self, name: str, opener: Callable[[], Sink], on_open: Optional[Callable[[Sink], None]] = None):
        super().__init__()
        self.name = name
        self.inner: Optional[Sink] = None
        self._opener = opener
        self._on_open = on_open
        self._open_failed = False

    def _sink(self) -> Sink:
        if self.inner is None:
            try:
                self.inner = self._opener()
            except BaseException:
                self._open_failed = True
                raise
            self._open_failed = False
            logger.info("spherewatch: sink %r opened.", self.name)
            if self._on_open is not None:
                self._on_open(self.inner)
        return self.inner

    def log_scalars(self, step, scalars, *, wall_time=None):
        self._sink().log_scalars(step, scalars, wall_time=wall_time)

    def log_scalars_batch(self, records):
        sink = self._sink()
        if callable(getattr(sink, "log_scalars_batch", None)):
            sink.log_scalars_batch(records)
        else:
            for step, scalars, wall_time in records:
                sink.log_scalars(step, scalars, wall_time=wall_time)

    def log_histogram(self, step, key, values, *, wall_time=None):
        self._sink().log_histogram(step, key, values, wall_time=wall_time)

    def log_alert(self, alert):
        self._sink().log_alert(alert)

    def flush(self):
        self._sink().flush()

    def close(self):
        if self.inner is not None:
            self.inner.close()
        self._closed = True

    def is_permanent_error(self, exc):
        if self._open_failed or self.inner is None:
            return False
        return self.inner.is_permanent_error(exc)

    def __getattr__(self, attr):  # run_id, log_dir, path, ... of the opened sink
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(f"sink {self.__dict__.get('name')!r} is not open yet (its destination has not been "
                                 f"reachable); {attr!r} is not known")
        return getattr(inner, attr)

    def __repr__(self):
        return f"_OpeningSink({self.name!r}, inner={self.inner!r})"


# ------------------------------------------------------------------------------------------------------- spool folder
def _lock(folder: str) -> Optional[int]:
    """Take the run folder's lock (non-blocking). Returns its fd, or None when another live process holds it."""
    make_private_dirs(folder)
    fd = os.open(os.path.join(folder, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock; one process per spool folder
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_private(path: str, data: Mapping[str, Any]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a tracking URI with credentials
    try:
        write_all(fd, json.dumps(data).encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _queue_files(folder: str) -> List[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.startswith(_QUEUE_PREFIX) and n.endswith(_QUEUE_SUFFIX))


def _remove_queue_files(paths: Sequence[str]) -> None:
    for path in paths:
        for p in (path, path[: -len(_QUEUE_SUFFIX)] + ".done"):
            try:
                os.remove(p)
            except OSError:
                pass


def _remove_folder_if_empty(folder: str) -> bool:
    try:
        left = [n for n in os.listdir(folder) if n not in (_LOCK_FILE, _RUN_FILE)]
    except OSError:
        return False
    if left:
        return False
    for n in (_RUN_FILE, _LOCK_FILE):
        try:
            os.remove(os.path.join(folder, n))
        except OSError:
            pass
    try:
        os.rmdir(folder)
    except OSError:
        return False
    return True


class _Orphan:
    """Another run's spool folder, unlocked (its process is gone): replayed into the sinks it names, then removed."""

    def __init__(self, folder: str, fd: int, slots: List[Any]) -> None:
        self.folder, self.fd, self.slots = folder, fd, slots


# ------------------------------------------------------------------------------------------------------------ writer
class RecordWriter:
    """Hands every record to the sinks on one background thread (rank zero only); see the module docstring.

    Args:
        config: the :class:`~spherewatch.MonitorConfig` (sinks, log_dir, jsonl_path, tracking_uri, run_id,
            experiment_name, run_name, spool_dir, close_timeout, strict).
        extra_sinks: sink objects handed over by the user or the host (a host's ``SummaryWriter`` inside a
            :class:`~spherewatch.sinks.TensorBoardSink`, an ``MLflowSink`` on the host's run).
        faults: where failures are reported: ``report(part, exc, consequence)`` and, optionally,
            ``recovered(part)``. Called from the writer thread.
        max_queue: records held in memory before they overflow to the spool folder.
        retry_initial, retry_max: the backoff of a failing sink (seconds, doubling).

    Under ``strict`` there is no thread: records are written on the caller's thread so that a failure raises at the
    step that caused it (tests, debugging).

    Raises:
        ModuleNotFoundError, ValueError: see :func:`check_sink_names`.
    """

    def __init__(self, config: Any, extra_sinks: List[Any], faults: Any, *, max_queue: int = 256,
                 retry_initial: float = 1.0, retry_max: float = 60.0) -> None:
        self.config = config
        self._extra = list(extra_sinks)
        self._faults = faults
        names = config.sinks if config.sinks is not None else (() if self._extra else ("jsonl",))
        check_sink_names(names, config.tracking_uri)
        self._names: Tuple[str, ...] = tuple(names)
        self._max_queue = int(max_queue)
        self._retry = (float(retry_initial), float(retry_max))
        self._inline = bool(config.strict)
        self.run_key: str = uuid.uuid4().hex[:16]
        self._adopted = False  # run_key came from a saved state: the folder (and MLflow run) of an earlier process
        self._root = os.path.abspath(config.spool_dir or os.path.join(config.log_dir, "spool"))
        self._specs: Optional[List[Dict[str, Any]]] = None  # resolved at the first submit (training thread)
        self._slots: Optional[List[Any]] = None  # ResilientSinks, opened on the writer thread
        self._orphans: List[_Orphan] = []
        self._lock_fd: Optional[int] = None
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._seq = 0
        self._gen = f"{int(time.time() * 1000):013d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._olock = threading.RLock()  # the overflow file (training thread, and the writer when it takes it over)
        self._overflowing = False
        self._ofd: Optional[int] = None
        self._overflow_warned = False
        self._inflight: Optional[Tuple[_Record, set]] = None
        self._close_requested = False
        self._finished = False  # the writer thread has closed every sink
        self._abandoned = False  # close() gave up waiting: the writer must not take further records
        self._dumped = False
        self._closed = False
        self._atexit_registered = False
        self._busy = False
        # run parameters: set on the training thread, sent by the writer thread before its next record, once per sink
        self._plock = threading.Lock()
        self._params: Dict[str, Any] = {}
        self._params_sent: Dict[int, set] = {}
        self._config_logged = False

    # ------------------------------------------------------------------ state (resume = the same run)
    def state_dict(self) -> Dict[str, Any]:
        return {"run_key": self.run_key}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the saved run: the same spool folder, and the same MLflow run when this writer created it."""
        key = state.get("run_key") if isinstance(state, Mapping) else None
        if not key or key == self.run_key:
            return
        if self._specs is not None:
            logger.warning("spherewatch: load_state_dict after the first evaluation was written: the records already "
                           "written stay in run %s; call load_state_dict before training to continue run %s.",
                           self.run_key, key)
            return
        self.run_key, self._adopted = str(key), True

    @property
    def folder(self) -> str:
        """This run's spool folder."""
        return os.path.join(self._root, self.run_key)

    # ------------------------------------------------------------------ training thread
    def submit_params(self, params: Mapping[str, Any]) -> None:
        """Run parameters for every sink that keeps them (``log_params``: MLflow params, a TensorBoard text and
        HParams, a JSONL record); sent by the writer thread with the next record, once per sink (rank zero only)."""
        if self._close_requested or dist_utils.rank() != 0:
            return
        with self._plock:
            self._params.update({str(k): v for k, v in params.items()})

    def _send_params(self) -> None:
        """On the writer thread: parameters not yet sent to an opened sink (a sink still down gets them later)."""
        if not self._params:
            return
        with self._plock:
            params = dict(self._params)
        for i, slot in enumerate(self._slots or []):
            target = getattr(slot, "inner", slot)
            if isinstance(target, _OpeningSink):
                target = target.inner  # None until its destination was reachable
            fn = getattr(target, "log_params", None) if target is not None else None
            if not callable(fn):
                continue
            sent = self._params_sent.setdefault(i, set())
            new = {k: v for k, v in params.items() if k not in sent}
            if not new:
                continue
            try:
                fn(new)
                sent.update(new)
            except Exception:  # noqa: BLE001 - tried again with the next record; a sink that is down reports
                # itself through its records (spooled and retried), so this is not a second fault report
                logger.debug("spherewatch: parameters for sink %r not logged yet.", getattr(slot, "name", "?"),
                             exc_info=True)

    def submit(self, step: int, values: Dict[str, float], hists: Dict[str, List[float]], alerts: List[Any]) -> None:
        """Queue one evaluation's records for the sinks; returns at once (rank zero only; elsewhere a no-op). The
        configuration goes out as run parameters with the first record."""
        if self._close_requested or dist_utils.rank() != 0:
            return
        if not self._config_logged:
            from spherewatch.keys import config_params

            self._config_logged = True
            self.submit_params(config_params(self.config))
        if self._specs is None:
            self._specs = self._resolve_specs()
        rec = _Record(self._seq, int(step), time.time(), dict(values), dict(hists), list(alerts))
        self._seq += 1
        if self._inline:
            self._open_slots()
            self._process(rec)
            return
        self._start()
        if self._overflowing or self._q.qsize() >= self._max_queue:
            with self._olock:
                if (self._overflowing or self._q.qsize() >= self._max_queue) and self._spill(rec):
                    return
        self._q.put(rec)

    def _spill(self, rec: _Record) -> bool:
        """Append ``rec`` to this process's overflow file (held under ``_olock``). False when the disk refuses it."""
        try:
            if self._ofd is None:
                make_private_dirs(self.folder)
                self._ofd = os.open(self._overflow_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            write_all(self._ofd, rec.line())
        except (OSError, ValueError, TypeError) as exc:
            if not self._overflow_warned:
                self._overflow_warned = True
                logger.warning("spherewatch: the writer's queue is full and the spool folder %s is not writable "
                               "(%s: %s); records are kept in memory meanwhile.", self.folder, type(exc).__name__, exc)
            return False
        if not self._overflowing:
            self._overflowing = True
            self._q.put(_OVERFLOW)
            logger.info("spherewatch: the sinks are slower than training; records overflow to %s until they catch up.",
                        self._overflow_path())
        return True

    def _overflow_path(self) -> str:
        return os.path.join(self.folder, f"{_QUEUE_PREFIX}{self._gen}{_QUEUE_SUFFIX}")

    def _resolve_specs(self) -> List[Dict[str, Any]]:
        """What each configured sink is, decided on the training thread (MLflow's active run is thread-local)."""
        cfg = self.config
        specs: List[Dict[str, Any]] = []
        for name in self._names:
            if name == "tensorboard":
                specs.append({"name": name, "log_dir": os.path.abspath(cfg.log_dir), "prefix": cfg.prefix})
            elif name == "jsonl":
                specs.append({"name": name, "path": os.path.abspath(cfg.resolved_jsonl_path)})
            elif name == "mlflow":
                spec: Dict[str, Any] = {"name": name, "tracking_uri": cfg.tracking_uri, "run_id": cfg.run_id,
                                        "experiment_name": cfg.experiment_name, "run_name": cfg.run_name,
                                        "prefix": cfg.prefix, "run_key": self.run_key}
                mlflow = sys.modules.get("mlflow")  # a host with an active run has imported mlflow already
                active = mlflow.active_run() if (mlflow is not None and cfg.run_id is None) else None
                if active is not None:
                    from spherewatch.sinks.mlflow import _same_uri

                    current = mlflow.get_tracking_uri()
                    if cfg.tracking_uri and not _same_uri(cfg.tracking_uri, current):
                        logger.warning("spherewatch: an MLflow run is active (%s); logging to it instead of opening "
                                       "a second run, and ignoring tracking_uri=%s.", active.info.run_id,
                                       cfg.tracking_uri)
                    spec.update(run_id=active.info.run_id, tracking_uri=current)
                specs.append(spec)  # tracking_uri None: the sink resolves MLflow's default on the writer thread
            else:
                specs.append({"name": name})
        for obj in self._extra:
            specs.append({"name": getattr(obj, "name", type(obj).__name__), "object": True})
        return specs

    def hold(self, busy: bool) -> None:
        """The training thread is in (``True``) or out of an evaluation: the writer waits between two writes while it
        is in one (at most ~0.25 s), so that its Python work (encoding, replaying a backlog) does not compete for the
        GIL with the step's many short torch calls."""
        self._busy = busy

    def _yield_to_training(self) -> None:
        time.sleep(0)  # let a waiting training thread take the GIL now, not at the end of the switch interval
        if self._busy and not self._close_requested:
            end = time.monotonic() + 0.25
            while self._busy and not self._close_requested and time.monotonic() < end:
                time.sleep(0.0005)

    # ------------------------------------------------------------------ sinks, flush, close (any thread)
    @property
    def sinks(self) -> List[Any]:
        """The sinks (inner sink of each resilient wrapper; an unopened sink is its opener), once the records
        submitted so far were written (waits at most ``close_timeout``)."""
        if dist_utils.rank() != 0:
            return []
        if self._specs is None:
            self._specs = self._resolve_specs()
        if self._inline:
            self._open_slots()
        elif not self._close_requested:
            self._start()
            self.flush()
        out = []
        for slot in self._slots or []:
            inner = getattr(slot, "inner", slot)
            if isinstance(inner, _OpeningSink) and inner.inner is not None:
                inner = inner.inner
            out.append(inner)
        return out

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
            for slot in self._slots or []:
                self._call(slot, slot.flush)
            return True
        if self._thread is None or self._finished:
            return True
        self._busy = False  # whoever waits for the writer must not also hold it back
        barrier = _Barrier()
        self._q.put(barrier)
        return self._wait(lambda: barrier.done, self._timeout(timeout))

    def close(self, timeout: Optional[float] = None) -> None:
        """Drain the queue into the sinks and close them, for at most ``timeout`` seconds (default the config's
        ``close_timeout``); what is left stays in the spool folder, named in a log line, for the next run. Idempotent,
        and safe from a signal handler (see the module docstring)."""
        if self._closed:
            return
        first = not self._close_requested
        self._close_requested = True
        self._busy = False  # e.g. a signal handler interrupting an evaluation: the writer must not wait for it
        if self._inline:
            self._closed = True
            self._close_slots()
            self._unregister()
            return
        if self._thread is None:
            self._closed = True
            self._release()
            self._unregister()
            return
        if first:
            self._q.put(_CLOSE)
        deadline = self._timeout(timeout)
        if not self._wait(lambda: self._finished, deadline) and not self._dumped:
            self._dumped = True
            self._abandoned = True
            left = self._dump_leftovers()
            if self._lock_fd is not None:  # the folder is the next run's to replay now (this one is done with it)
                try:
                    os.close(self._lock_fd)
                except OSError:
                    pass
                self._lock_fd = None
            logger.warning(
                "spherewatch: close() waited %.3gs (close_timeout) for the sinks; %d record(s) still queued are kept in "
                "the spool folder %s with the sinks' own backlog. The next Monitor using that spool folder delivers "
                "them, once, into this run's sinks (a resumed run: before its own records).", deadline, left,
                self.folder,
            )
        if self._finished or self._dumped:
            self._closed = True
            self._unregister()

    def _timeout(self, timeout: Optional[float]) -> float:
        return float(self.config.close_timeout if timeout is None else timeout)

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float) -> bool:
        """Poll ``done`` until ``timeout``: ``time.sleep`` takes no lock, so this is safe in a signal handler."""
        end = time.monotonic() + max(0.0, timeout)
        pause = 0.0005
        while not done():
            if time.monotonic() >= end:
                return done()
            time.sleep(pause)
            pause = min(0.01, pause * 2)
        return True

    def _dump_leftovers(self) -> int:
        """close() timed out: put the in-flight record (for the sinks that lack it) and the queue in the spool."""
        n = 0
        with self._olock:
            inflight = self._inflight
            if inflight is not None:
                rec, done = inflight
                missing = [i for i in range(len(self._slots or [])) if i not in done]
                if missing:
                    self._spill(_Record(rec.seq, rec.step, rec.time, rec.values, rec.hists, rec.alerts, missing))
                    n += 1
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Record):
                    n += self._spill(item)
                elif isinstance(item, _Barrier):
                    item.done = True
            if self._ofd is not None:
                try:
                    os.fsync(self._ofd)
                except OSError:
                    pass
        return n

    def _start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="spherewatch-writer", daemon=True)
        self._thread.start()
        if not self._atexit_registered:
            self._atexit_registered = True
            atexit.register(self._close_at_exit)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never fail the interpreter's exit
            logger.debug("spherewatch: closing the writer at exit failed.", exc_info=True)

    def _unregister(self) -> None:
        if self._atexit_registered:
            self._atexit_registered = False
            try:
                atexit.unregister(self._close_at_exit)
            except Exception:  # pragma: no cover
                pass

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            self._open_slots()
        except Exception as exc:  # noqa: BLE001 - never die: a writer without sinks still drains its queue
            logger.error("spherewatch: the writer could not set up its sinks (%s: %s).", type(exc).__name__, exc,
                         exc_info=exc)
            self._slots = self._slots or []
        while True:
            if self._abandoned:
                break
            try:
                item = self._q.get(timeout=self._idle_timeout())
            except queue.Empty:
                try:
                    self._drive()
                except Exception as exc:  # noqa: BLE001
                    logger.error("spherewatch: the writer thread hit %s: %s while retrying; it goes on.",
                                 type(exc).__name__, exc, exc_info=exc)
                continue
            if self._abandoned:
                if isinstance(item, _Record):
                    with self._olock:
                        self._spill(item)
                break
            try:
                if isinstance(item, _Record):
                    self._process(item)
                elif isinstance(item, _Barrier):
                    self._drive()
                elif item is _OVERFLOW:
                    self._take_overflow()
                elif item is _CLOSE:
                    self._close_slots()
                    self._finished = True
                    return
            except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
                logger.error("spherewatch: the writer thread hit %s: %s; it goes on.", type(exc).__name__, exc,
                             exc_info=exc)
            finally:
                if isinstance(item, _Barrier):
                    item.done = True
                elif item is _CLOSE:
                    self._finished = True
            if item is _CLOSE:
                return

    def _idle_timeout(self) -> float:
        due = [r for r in (s.next_retry for s in self._all_slots()) if r is not None]
        if not due:
            return 1.0
        return min(1.0, max(0.01, min(due) - time.monotonic()))

    def _all_slots(self) -> List[Any]:
        slots = [s for s in (self._slots or []) if hasattr(s, "next_retry")]
        for orphan in self._orphans:
            slots += orphan.slots
        return slots

    def _drive(self) -> None:
        """Retry what is due: backlogs of failing sinks, orphan replays."""
        now = time.monotonic()
        for slot in self._slots or []:
            due = getattr(slot, "next_retry", None)
            if due is not None and due <= now:
                self._call(slot, slot.flush)
        for orphan in list(self._orphans):
            for slot in orphan.slots:
                self._call(slot, slot.flush, report=False)
            if all(s.pending == 0 for s in orphan.slots):
                self._finish_orphan(orphan)

    def _call(self, slot: Any, fn: Callable[[], None], report: bool = True) -> None:
        try:
            fn()
        except Exception as exc:  # ResilientSink raises only under strict (or a sink object that is not wrapped)
            if report:
                self._report(f"sink:{getattr(slot, 'name', '?')}", exc, "it may not have flushed")

    def _report(self, part: str, exc: BaseException, consequence: str) -> None:
        """Report to the Monitor, at the step of the record being written (``faults.report`` may raise under strict)."""
        step = self._inflight[0].step if self._inflight is not None else None
        try:
            self._faults.report(part, exc, consequence, step=step)
        except TypeError as err:
            if "step" not in str(err):
                raise
            self._faults.report(part, exc, consequence)

    def _process(self, rec: _Record) -> None:
        self._send_params()
        done: set = set()
        self._inflight = (rec, done)
        for i, slot in enumerate(self._slots or []):
            if rec.only is not None and i not in rec.only:
                continue
            if not self._inline:
                self._yield_to_training()
            try:
                slot.log_scalars(rec.step, rec.values, wall_time=rec.time)
                for k, v in rec.hists.items():
                    if any(math.isfinite(x) for x in v):  # an all-NaN spectrum is reported by the nonfinite rule
                        slot.log_histogram(rec.step, k, v, wall_time=rec.time)
                for a in rec.alerts:
                    slot.log_alert(a)
                slot.flush()
            except Exception as exc:  # ResilientSink raises only under strict
                self._report(f"sink:{getattr(slot, 'name', '?')}", exc, "its points are spooled and replayed")
            done.add(i)
        self._inflight = None

    def _take_overflow(self) -> None:
        """Everything before the marker is written: take the overflow file over and write its records."""
        with self._olock:
            if self._ofd is not None:
                os.close(self._ofd)
                self._ofd = None
            path = self._overflow_path()
            taken = path[: -len(_QUEUE_SUFFIX)] + f"-t{time.monotonic_ns()}{_QUEUE_SUFFIX}"
            try:
                os.replace(path, taken)
            except OSError:
                taken = None
            self._overflowing = False
        if taken is not None:
            self._replay_files([taken], self._slots or [])

    def _replay_files(self, paths: Sequence[str], slots: List[Any]) -> None:
        records, paths = _load_queue_files_from(paths)
        for path, recs in records:
            done_path = path[: -len(_QUEUE_SUFFIX)] + ".done"
            for rec in recs:
                if self._abandoned:
                    return
                if slots is not self._slots:
                    self._yield_to_training()
                self._process_into(rec, slots)
                try:
                    _write_json_private(done_path, rec.seq)  # type: ignore[arg-type]
                except OSError:
                    pass
            _remove_queue_files([path])

    def _process_into(self, rec: _Record, slots: List[Any]) -> None:
        if slots is self._slots:
            self._process(rec)
            return
        for i, slot in enumerate(slots):
            if rec.only is not None and i not in rec.only:
                continue
            try:
                slot.log_scalars(rec.step, rec.values, wall_time=rec.time)
                for k, v in rec.hists.items():
                    if any(math.isfinite(x) for x in v):
                        slot.log_histogram(rec.step, k, v, wall_time=rec.time)
                for a in rec.alerts:
                    slot.log_alert(a)
            except Exception:  # noqa: BLE001 - an orphan replay never raises
                logger.debug("spherewatch: replaying into %r failed.", slot, exc_info=True)

    # ------------------------------------------------------------------ opening (writer thread, or inline)
    def _wrap(self, sink: Any, index: int, spool_folder: str, report: bool = True) -> Any:
        from spherewatch.sinks.resilient import ResilientSink

        if isinstance(sink, ResilientSink):
            return sink
        name = getattr(sink, "name", type(sink).__name__)
        faults = self._faults

        def on_error(sink_name: str, exc: BaseException) -> None:
            if report:
                self._report(f"sink:{sink_name}", exc, "its points are spooled and replayed when it recovers")

        def on_recovered(sink_name: str) -> None:
            recovered = getattr(faults, "recovered", None)
            if report and callable(recovered):
                recovered(f"sink:{sink_name}")

        wrapped = ResilientSink(sink, spool_path=os.path.join(spool_folder, f"{name}-{index}.spool.jsonl"),
                                on_error=on_error, on_recovered=on_recovered, strict=self._inline,
                                retry_initial=self._retry[0], retry_max=self._retry[1])
        if not self._inline:
            wrapped.between = self._yield_to_training
        return wrapped

    def _open_slots(self) -> None:
        if self._slots is not None:
            return
        if self._specs is None:
            self._specs = self._resolve_specs()
        folder = self.folder
        try:
            self._lock_fd = _lock(folder)
        except OSError as exc:
            logger.warning("spherewatch: cannot lock the spool folder %s (%s: %s); spooling goes on unlocked.",
                           folder, type(exc).__name__, exc)
        else:
            if self._lock_fd is None:  # a live process writes this run (the same state loaded twice)
                old = self.run_key
                self.run_key, self._adopted = uuid.uuid4().hex[:16], False
                folder = self.folder
                logger.warning("spherewatch: the spool folder of run %s is in use by another process; this monitor "
                               "spools to %s instead.", old, folder)
                for spec in self._specs:
                    if spec.get("name") == "mlflow":
                        spec["run_key"] = self.run_key
                self._lock_fd = _lock(folder)
        saved = _read_json(os.path.join(folder, _RUN_FILE)) if self._adopted else {}
        saved_specs = saved.get("sinks", []) if isinstance(saved.get("sinks"), list) else []
        extra = iter(self._extra)
        slots: List[Any] = []
        for i, spec in enumerate(self._specs):
            if spec.get("object"):
                slots.append(self._wrap(next(extra), i, folder))
                continue
            if spec["name"] == "mlflow" and not spec.get("run_id"):
                old = saved_specs[i] if i < len(saved_specs) and isinstance(saved_specs[i], dict) else {}
                if old.get("name") == "mlflow" and old.get("run_id"):
                    spec.update(run_id=old["run_id"], created_run=bool(old.get("created_run")))
                elif self._adopted:
                    spec["find_run"] = True
            opener = _OpeningSink(spec["name"], lambda spec=spec: _build_sink(spec["name"], spec),
                                  on_open=lambda sink, spec=spec: self._opened(spec, sink))
            slots.append(self._wrap(opener, i, folder))
        self._slots = slots
        for slot in slots:  # local sinks open at once (a failure is retried at the first record, and reported then)
            opener = getattr(slot, "inner", None)
            if isinstance(opener, _OpeningSink) and opener.name in ("memory", "jsonl", "tensorboard"):
                try:
                    opener._sink()
                except Exception:  # noqa: BLE001
                    pass
        self._save_run_file()
        if self._adopted:  # our own overflow records from the earlier process, after the sinks' spooled backlog
            self._replay_files([p for p in _queue_files(folder) if self._gen not in p], slots)
        if not self._inline:
            self._find_orphans()

    def _opened(self, spec: Dict[str, Any], sink: Any) -> None:
        if spec.get("name") == "mlflow":
            spec["tracking_uri"] = getattr(sink, "tracking_uri", spec.get("tracking_uri"))
            spec["run_id"] = getattr(sink, "run_id", None)
            spec["created_run"] = bool(getattr(sink, "created_run", False))
            spec.pop("find_run", None)
            self._save_run_file()

    def _save_run_file(self) -> None:
        try:
            make_private_dirs(self.folder)
            _write_json_private(os.path.join(self.folder, _RUN_FILE),
                                {"run_key": self.run_key, "sinks": self._specs or []})
        except OSError:
            logger.debug("spherewatch: cannot write %s.", os.path.join(self.folder, _RUN_FILE), exc_info=True)

    def _find_orphans(self) -> None:
        try:
            names = sorted(os.listdir(self._root))
        except OSError:
            return
        for name in names:
            folder = os.path.join(self._root, name)
            if name == self.run_key or not os.path.isdir(folder) or not os.path.exists(os.path.join(folder, _RUN_FILE)):
                continue
            try:
                fd = _lock(folder)
            except OSError:
                continue
            if fd is None:
                continue  # a live run: never touch its spool
            meta = _read_json(os.path.join(folder, _RUN_FILE))
            slots: List[Any] = []
            for i, spec in enumerate(meta.get("sinks", [])):
                if not isinstance(spec, dict) or spec.get("object") or spec.get("name") not in _SINK_NAMES or (
                        spec.get("name") == "memory"):
                    slots.append(None)
                    continue
                if spec["name"] == "mlflow" and not spec.get("run_id"):
                    spec = dict(spec, find_run=True)
                opener = _OpeningSink(spec["name"], lambda spec=spec: _build_sink(spec["name"], spec))
                slots.append(self._wrap(opener, i, folder, report=False))
            keep = [s for s in slots if s is not None]
            unknown = [n for n in os.listdir(folder) if n.endswith(".spool.jsonl") and not n.startswith(_QUEUE_PREFIX)
                       and not any(s.spool_path == os.path.join(folder, n) for s in keep)]
            logger.info("spherewatch: found the spool of run %s (its process ended before delivering it) in %s; "
                        "replaying it into that run's sinks.", name, folder)
            self._replay_files(_queue_files(folder), [s if s is not None else _Null() for s in slots])
            if unknown:
                logger.warning("spherewatch: %s holds records of sink objects that only their own run can rebuild "
                               "(%s); left in place.", folder, ", ".join(unknown))
            self._orphans.append(_Orphan(folder, fd, keep))

    def _finish_orphan(self, orphan: _Orphan) -> None:
        self._orphans.remove(orphan)
        for slot in orphan.slots:
            try:
                slot.close()
            except Exception:  # noqa: BLE001
                logger.debug("spherewatch: closing a replayed sink failed.", exc_info=True)
        removed = _remove_folder_if_empty(orphan.folder)
        try:
            os.close(orphan.fd)
        except OSError:
            pass
        if removed:
            logger.info("spherewatch: delivered the spool of run %s.", os.path.basename(orphan.folder))

    def _close_slots(self) -> None:
        try:
            self._send_params()  # parameters given after the last record
        except Exception:  # noqa: BLE001 - _send_params reports its own failures
            pass
        for slot in self._slots or []:
            try:
                slot.close()
            except Exception as exc:
                self._report(f"sink:{getattr(slot, 'name', '?')}", exc, "it may not have flushed")
        for orphan in list(self._orphans):
            for slot in orphan.slots:
                try:
                    slot.close()
                except Exception:  # noqa: BLE001
                    pass
            try:
                os.close(orphan.fd)
            except OSError:
                pass
        self._orphans = []
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            _remove_folder_if_empty(self.folder)
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None

    def __repr__(self) -> str:
        return (f"RecordWriter(run_key={self.run_key!r}, sinks={list(self._names)}, queued={self._q.qsize()}, "
                f"spool={self.folder!r})")


class _Null:
    """Stands for a sink an orphan replay cannot rebuild (a memory sink, a host's object)."""

    name = "none"

    def log_scalars(self, *a: Any, **k: Any) -> None:
        pass

    log_histogram = log_alert = log_scalars


def _load_queue_files_from(paths: Sequence[str]) -> Tuple[List[Tuple[str, List[_Record]]], List[str]]:
    out = []
    for path in paths:
        recs, _ = _load_queue_files_one(path)
        out.append((path, recs))
    return out, list(paths)


def _load_queue_files_one(path: str) -> Tuple[List[_Record], str]:
    done = -1
    try:
        with open(path[: -len(_QUEUE_SUFFIX)] + ".done", "r") as f:
            done = int(f.read().strip() or -1)
    except (OSError, ValueError):
        pass
    by_seq: Dict[int, _Record] = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    rec = _Record.parse(raw)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash
                if rec.seq <= done:
                    continue
                if rec.seq not in by_seq or rec.only is not None:  # the in-flight copy names the sinks missing it
                    by_seq[rec.seq] = rec
    except OSError:
        pass
    return [by_seq[s] for s in sorted(by_seq)], path
