"""The sinks of one run, each behind its retrying wrapper: opened lazily, written an evaluation at a time, closed.

A :class:`SinkSet` holds one *slot* per sink: a sink the registry builds from its spec (opened at its first call by a
:class:`LazySink`, on the writer thread) or a sink object handed over by the user or the host; each behind a
:class:`~spherewatch.delivery.retry.ResilientSink` spooling into the run's folder (``<name>-<i>.spool.jsonl``). The
writer keeps one for its own run, and one per crashed run whose spool it replays (with sinks rebuilt from that run's
``run.json``).

Example:
    >>> import tempfile
    >>> from spherewatch.delivery.record import Evaluation
    >>> from spherewatch.delivery.spool import RunFolder
    >>> sinks = SinkSet([{"name": "memory"}], [], RunFolder(tempfile.mkdtemp(), "run"))
    >>> sinks.write(Evaluation(0, 5, 0.0, {"spherewatch/uniformity": -3.5}, {}, []))
    >>> sinks.sinks[0].last("spherewatch/uniformity")
    -3.5
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from spherewatch.delivery.record import Evaluation
from spherewatch.delivery.registry import build_sink, sink_entry
from spherewatch.delivery.retry import ResilientSink
from spherewatch.delivery.sink import Sink, capabilities
from spherewatch.delivery.spool import RunFolder
from spherewatch.delivery.yielding import yielding

__all__ = ["LazySink", "NullSink", "SinkSet"]

logger = logging.getLogger("spherewatch.writer")

Report = Callable[[str, BaseException, str], None]


class LazySink(Sink):
    """A sink opened at its first call. Failing to open is a transient error (raised to the
    :class:`~spherewatch.sinks.ResilientSink` around it, which spools and retries with backoff): the configuration
    was validated at construction, so a sink that cannot open is down, not wrong."""

    supports_batches = True  # forwarded to the opened sink's log_scalars_batch

    def __init__(self, name: str, opener: Callable[[], Sink], on_open: Optional[Callable[[Sink], None]] = None,
                 pause: Optional[Callable[[], None]] = None):
        super().__init__()
        self.name = name
        self._opener, self._on_open, self._pause = opener, on_open, pause
        self._inner: Optional[Sink] = None
        self._open_failed = False

    @property
    def opened(self) -> Optional[Sink]:
        """The opened sink, or ``None`` while its destination has not been reachable."""
        return self._inner

    def open(self) -> Sink:
        if self._inner is None:
            try:
                with yielding(self._pause):  # imports and store set-up: the training thread keeps the GIL
                    self._inner = self._opener()
            except BaseException:
                self._open_failed = True
                raise
            self._open_failed = False
            logger.info("spherewatch: sink %r opened.", self.name)
            if self._on_open is not None:
                self._on_open(self._inner)
        return self._inner

    def log_scalars(self, step, scalars, *, wall_time=None):
        self.open().log_scalars(step, scalars, wall_time=wall_time)

    def log_scalars_batch(self, records):
        self.open().log_scalars_batch(records)

    def log_histogram(self, step, key, values, *, wall_time=None):
        self.open().log_histogram(step, key, values, wall_time=wall_time)

    def log_alert(self, alert):
        self.open().log_alert(alert)

    def flush(self):
        self.open().flush()

    def close(self):
        if self._inner is not None:
            self._inner.close()
        self._closed = True

    def is_permanent_error(self, exc):
        if self._open_failed or self._inner is None:
            return False
        return self._inner.is_permanent_error(exc)

    def __repr__(self):
        return f"LazySink({self.name!r}, opened={self._inner!r})"


class NullSink(Sink):
    """Stands for a sink a replay cannot rebuild (a memory sink, a host's object): takes everything, keeps nothing."""

    name = "none"

    def log_scalars(self, step, scalars, *, wall_time=None):
        pass

    def log_histogram(self, step, key, values, *, wall_time=None):
        pass

    def log_alert(self, alert):
        pass


class _Slot:
    """One sink of the set: its wrapper, and what it is (a registry sink and its spec, or an object)."""

    __slots__ = ("lazy", "obj", "params_sent", "spec", "wrapper")

    def __init__(self, wrapper: Any, spec: Dict[str, Any], lazy: Optional[LazySink] = None, obj: Any = None):
        self.wrapper, self.spec, self.lazy, self.obj = wrapper, spec, lazy, obj
        self.params_sent: set = set()

    @property
    def name(self) -> str:
        return str(getattr(self.wrapper, "name", "?"))

    @property
    def target(self) -> Any:
        """The sink that writes (``None`` while a registry sink is not open yet)."""
        if self.lazy is not None:
            return self.lazy.opened
        return self.obj.inner if isinstance(self.obj, ResilientSink) else self.obj

    @property
    def shown(self) -> Any:
        """The sink as the user sees it (an unopened registry sink: its :class:`LazySink`)."""
        target = self.target
        return target if target is not None else self.lazy


class SinkSet:
    """The sinks of one run (see the module docstring).

    Args:
        specs: one spec per sink (``{"name": ...}``; ``"object": True`` for the next of ``objects``).
        objects: the sink objects handed over, in order.
        folder: the run's spool folder (the sinks' spool files go there).
        report: ``report(part, exc, consequence)`` for failures (``None``: a replay, which only logs).
        strict: the wrappers re-raise (tests, debugging).
        retry: ``(initial, max)`` backoff in seconds.
        pause: called between two deliveries of a backlog (yield to the training thread).
        recovered: called with ``"sink:<name>"`` when an outage ends.
        on_spec: called when an opened sink changed its spec (e.g. the MLflow run it created): save ``run.json``.
    """

    def __init__(self, specs: Sequence[Dict[str, Any]], objects: Sequence[Any], folder: RunFolder, *,
                 report: Optional[Report] = None, strict: bool = False, retry: Tuple[float, float] = (1.0, 60.0),
                 pause: Optional[Callable[[], None]] = None, recovered: Optional[Callable[[str], None]] = None,
                 on_spec: Optional[Callable[[], None]] = None) -> None:
        self._report, self._strict, self._retry, self._pause = report, strict, retry, pause
        self._recovered, self._on_spec = recovered, on_spec
        objects_left = iter(objects)
        self._slots: List[_Slot] = []
        for i, spec in enumerate(specs):
            if spec.get("object"):
                obj = next(objects_left)
                self._slots.append(_Slot(self._wrap(obj, folder.sink_spool(_name(obj), i)), spec, obj=obj))
            elif spec.get("name") is None:
                self._slots.append(_Slot(NullSink(), spec, obj=None))
            else:
                lazy = LazySink(spec["name"], lambda spec=spec: build_sink(spec),
                                on_open=lambda sink, spec=spec: self._opened(spec, sink), pause=pause)
                self._slots.append(_Slot(self._wrap(lazy, folder.sink_spool(spec["name"], i)), spec, lazy=lazy))

    def _wrap(self, sink: Any, spool_path: str) -> Any:
        if isinstance(sink, ResilientSink):
            return sink
        report = self._report

        def on_error(sink_name: str, exc: BaseException) -> None:
            if report is not None:
                report(f"sink:{sink_name}", exc, "its points are spooled and replayed when it recovers")

        def on_recovered(sink_name: str) -> None:
            if report is not None and self._recovered is not None:
                self._recovered(f"sink:{sink_name}")

        return ResilientSink(sink, spool_path=spool_path, on_error=on_error, on_recovered=on_recovered,
                             strict=self._strict, retry_initial=self._retry[0], retry_max=self._retry[1],
                             between=self._pause)

    def _opened(self, spec: Dict[str, Any], sink: Any) -> None:
        entry = sink_entry(spec["name"])
        if entry.opened is not None:
            spec.update(entry.opened(sink))
            spec.pop("find_run", None)
            if self._on_spec is not None:
                self._on_spec()

    # ------------------------------------------------------------------ what the set is
    @property
    def sinks(self) -> List[Any]:
        """The sinks as the user sees them, in order."""
        return [slot.shown for slot in self._slots]

    @property
    def remote(self) -> List[int]:
        """Indices of the sinks that write to a server (registry entries not ``local``; objects that say
        ``remote = True``): the writer hands them records on a thread of their own, so that a slow server never
        holds the local sinks' records back."""
        out = []
        for i, slot in enumerate(self._slots):
            if slot.lazy is not None:
                remote = not sink_entry(slot.spec["name"]).local
            else:
                obj = slot.obj.inner if isinstance(slot.obj, ResilientSink) else slot.obj
                remote = bool(getattr(obj, "remote", False))
            if remote:
                out.append(i)
        return out

    @property
    def spool_paths(self) -> List[str]:
        return [p for p in (getattr(s.wrapper, "spool_path", None) for s in self._slots) if p]

    def __len__(self) -> int:
        return len(self._slots)

    def open_local(self) -> None:
        """Open the local sinks now (a failure is retried at the first record, and reported then)."""
        for slot in self._slots:
            if slot.lazy is not None and sink_entry(slot.spec["name"]).local:
                try:
                    slot.lazy.open()
                except Exception:  # noqa: BLE001
                    pass

    # ------------------------------------------------------------------ writing
    def write(self, rec: Evaluation, done: Optional[set] = None, flush: bool = True,
              slots: Optional[Sequence[int]] = None) -> None:
        """Hand ``rec`` to its sinks (those of ``rec.only``, and of ``slots`` when given); ``done`` collects the
        indices written."""
        for i, slot in enumerate(self._slots):
            if (rec.only is not None and i not in rec.only) or (slots is not None and i not in slots):
                continue
            if self._pause is not None:
                self._pause()
            try:
                sink = slot.wrapper
                sink.log_scalars(rec.step, rec.values, wall_time=rec.time)
                for k, v in rec.hists.items():
                    if any(math.isfinite(x) for x in v):  # an all-NaN spectrum is reported by the nonfinite rule
                        sink.log_histogram(rec.step, k, v, wall_time=rec.time)
                for a in rec.alerts:
                    sink.log_alert(a)
                if flush:
                    sink.flush()
            except Exception as exc:  # ResilientSink raises only under strict
                self._fail(slot, exc, "its points are spooled and replayed")
            if done is not None:
                done.add(i)

    def send_params(self, params: Mapping[str, Any], slots: Optional[Sequence[int]] = None) -> None:
        """Parameters not yet sent to an opened sink that keeps them (a sink still down gets them later)."""
        for slot in self._pick(slots):
            target = slot.target
            if target is None or not capabilities(target).params:
                continue
            new = {k: v for k, v in params.items() if k not in slot.params_sent}
            if not new:
                continue
            try:
                target.log_params(new)
                slot.params_sent.update(new)
            except Exception:  # noqa: BLE001 - tried again with the next record; a sink that is down reports
                # itself through its records (spooled and retried), so this is not a second fault report
                logger.debug("spherewatch: parameters for sink %r not logged yet.", slot.name, exc_info=True)

    def _pick(self, slots: Optional[Sequence[int]]) -> List[_Slot]:
        return self._slots if slots is None else [self._slots[i] for i in slots]

    def next_retry(self, slots: Optional[Sequence[int]] = None) -> Optional[float]:
        due = [r for r in (getattr(s.wrapper, "next_retry", None) for s in self._pick(slots)) if r is not None]
        return min(due) if due else None

    def pending(self) -> int:
        return sum(getattr(s.wrapper, "pending", 0) for s in self._slots)

    def retry_due(self, now: float, slots: Optional[Sequence[int]] = None) -> None:
        """Retry the backlogs whose backoff has elapsed."""
        for slot in self._pick(slots):
            due = getattr(slot.wrapper, "next_retry", None)
            if due is not None and due <= now:
                self._call(slot, slot.wrapper.flush)

    def flush(self) -> None:
        for slot in self._slots:
            self._call(slot, slot.wrapper.flush)

    def close(self, finish: Optional[Callable[[Any], None]] = None) -> None:
        """Close every sink; before closing a registry sink that takes artifacts, with its backlog delivered, call
        ``finish(sink)`` (the Monitor attaches the run's report)."""
        for slot in self._slots:
            target = slot.target
            if finish is not None and slot.lazy is not None and target is not None and capabilities(target).artifacts:
                try:
                    if not isinstance(slot.wrapper, ResilientSink) or slot.wrapper.deliver_now():
                        finish(target)
                except Exception:  # noqa: BLE001 - the finishing touch never keeps a sink from closing
                    logger.debug("spherewatch: finishing sink %r failed.", slot.name, exc_info=True)
            self._call(slot, slot.wrapper.close, "it may not have flushed")

    def _call(self, slot: _Slot, fn: Callable[[], None], consequence: str = "it may not have flushed") -> None:
        try:
            fn()
        except Exception as exc:  # ResilientSink raises only under strict (or a sink object that is not wrapped)
            self._fail(slot, exc, consequence)

    def _fail(self, slot: _Slot, exc: BaseException, consequence: str) -> None:
        """Report a failure of ``slot`` (a replay only logs it)."""
        if self._report is not None:
            self._report(f"sink:{slot.name}", exc, consequence)
        else:
            logger.debug("spherewatch: replaying into %r failed.", slot.name, exc_info=exc)

    def __repr__(self) -> str:
        return f"SinkSet({[slot.name for slot in self._slots]})"


def _name(sink: Any) -> str:
    return str(getattr(sink, "name", type(sink).__name__))
