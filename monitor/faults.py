"""How the monitor reports its own failures: once per part and kind of failure, bounded, never at "step -1".

A *fault* is a failure inside spherewatch (a capture, a metric, a sink, a collective), not a property of the
embeddings. It is counted in :attr:`FaultReporter.counts` (``Monitor.faults``) every time, and *reported* (one
``monitor_fault`` :class:`~spherewatch.Alert` of ``kind="fault"``, delivered to the alert channels: a
:class:`~spherewatch.errors.MonitorFault` warning, or one ERROR log line with ``warn=False``) only:

* the first time a part fails with a given kind of error (the exception class), until the part has
  :meth:`recovered` -- that is, worked :data:`RECOVER_AFTER` times in a row without failing. A part that fails on
  every other batch never counts as recovered, so it is reported once, not once per batch;
* at most :data:`MAX_REPORTS_PER_PART` times per part over the whole run (re-armed reports included); the last
  report says that further failures are only counted.

So the number of fault reports is bounded by construction, whatever the input. ``strict=True`` raises a
:class:`~spherewatch.errors.SpherewatchError` instead; under DDP, :meth:`deferring` holds the first such error
until :meth:`raise_deferred` (after the last collective), so no rank leaves the others waiting.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from spherewatch.alerts.alert import Alert
from spherewatch.errors import SpherewatchError
from spherewatch.redact import redact

__all__ = ["FaultReporter", "MAX_REPORTS_PER_PART", "RECOVER_AFTER"]

logger = logging.getLogger("spherewatch")

#: Consecutive successes after which a failed part counts as recovered (and would be reported again).
RECOVER_AFTER = 3
#: Reports (alerts + log lines) per part over a whole run; later failures are counted only.
MAX_REPORTS_PER_PART = 5


def _redact(text: str) -> str:
    """Credentials in URLs and webhook URLs never leave the process (an MLflow error holds the tracking URI)."""
    try:
        return redact(text)
    except Exception:  # noqa: BLE001 - redaction must never turn a report into a crash
        return "<message hidden: it could not be checked for credentials>"


class FaultReporter:
    """Counts and reports failures of the monitor's parts (see the module docstring for the rules).

    Args:
        config: the :class:`~spherewatch.MonitorConfig` (``strict`` and ``prefix`` are read).
        dispatch: delivers a list of alerts to the alert channels.
        current_step: the step a failure happens at (the step being evaluated, else the step being trained).
    """

    def __init__(
        self, config: Any, dispatch: Callable[[List[Alert]], None], current_step: Callable[[], Optional[int]]
    ) -> None:
        self.config = config
        self._dispatch = dispatch
        self._current_step = current_step
        #: failures per part, every one counted (``Monitor.faults``)
        self.counts: Dict[str, int] = defaultdict(int)
        self._reported: Set[Tuple[str, str]] = set()  # (part, kind) reported and not recovered since
        self._reports: Dict[str, int] = defaultdict(int)
        self._ok_streak: Dict[str, int] = {}
        self._defer = False
        self._deferred: Optional[SpherewatchError] = None
        # the writer and webhook threads report too; the lock is never held while an alert is delivered
        self._lock = threading.RLock()

    def report(self, part: str, exc: BaseException, consequence: str = "skipped", step: Optional[int] = None) -> None:
        """Count a failure of ``part``; report it when it is new (see the module docstring); raise under strict.

        ``step``: the step the failure belongs to (the writer thread passes the step of the record it was writing);
        default: the step being evaluated, else the one being trained."""
        with self._lock:
            alert = self._count(part, exc, consequence, step)
        if alert is None:
            return
        try:
            self._dispatch([alert])
        except Warning:  # a warnings filter escalated MonitorFault to an error: the user asked for it
            raise
        except Exception:  # noqa: BLE001 - the dispatcher already isolates channels
            pass

    def defer(self, part: str, exc: BaseException) -> None:
        """Under ``strict``, from another thread (the webhook's): count the failure and raise it at the next
        :meth:`raise_deferred` (from ``Monitor.step``), since it cannot be raised into the training thread here."""
        with self._lock:
            self.counts[part] += 1
            if self._deferred is None:
                err = SpherewatchError(_redact(f"spherewatch {part} failed: {type(exc).__name__}: {exc}"))
                err.__cause__ = exc
                self._deferred = err

    def _count(self, part: str, exc: BaseException, consequence: str, step: Optional[int]) -> Optional[Alert]:
        self.counts[part] += 1
        self._ok_streak[part] = 0
        if self.config.strict:
            err = SpherewatchError(_redact(f"spherewatch {part} failed: {type(exc).__name__}: {exc}"))
            if self._defer:
                if self._deferred is None:
                    err.__cause__ = exc
                    self._deferred = err
                return None
            raise err from exc
        kind = type(exc).__name__
        if (part, kind) in self._reported or self._reports[part] >= MAX_REPORTS_PER_PART:
            return None
        self._reported.add((part, kind))
        self._reports[part] += 1
        last = self._reports[part] >= MAX_REPORTS_PER_PART
        text = _redact(f"spherewatch: {part} failed ({kind}: {exc}); {consequence}. Training continues.")
        if last:
            text += f" This part failed {MAX_REPORTS_PER_PART} times: later failures are only counted in Monitor.faults."
        logger.debug("spherewatch: traceback of the %s failure", part, exc_info=exc)
        if step is None:
            step = self._current_step()
        return Alert(
            rule="monitor_fault", key=f"{self.config.prefix}/monitor/{part}", value=float("nan"),
            step=0 if step is None else int(step), severity="warning", message=text, kind="fault",
        )

    def recovered(self, part: str) -> None:
        """``part`` worked; after :data:`RECOVER_AFTER` successes in a row its failures are reported again."""
        streak = self._ok_streak.get(part)
        if streak is None:  # never failed: nothing to re-arm (and no per-call allocation on the hot path)
            return
        with self._lock:
            streak += 1
            self._ok_streak[part] = streak
            if streak == RECOVER_AFTER and any(p == part for p, _ in self._reported):
                self._reported = {(p, k) for p, k in self._reported if p != part}
                logger.info("spherewatch: %s works again (%d times in a row).", part, streak)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Under strict, hold the first failure inside this block; :meth:`raise_deferred` raises it."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def raise_deferred(self) -> None:
        """Raise the failure held by :meth:`deferring`, if any (once)."""
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
