"""How the Monitor reports its own failures: once per part, to the log and the alert channels, or raised under
``strict``. Every other part of the engine reports through one :class:`FaultReporter`."""
from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional

from spherewatch.alerts.alert import Alert
from spherewatch.errors import SpherewatchError

__all__ = ["FaultReporter"]

logger = logging.getLogger("spherewatch")


class FaultReporter:
    """Counts failures per part (``counts``, exposed as ``Monitor.faults``) and reports each part once.

    Args:
        config: the Monitor's config (``strict`` and ``prefix`` are read).
        dispatch: delivers the ``monitor_fault`` alert to the alert channels.
        current_step: the step being evaluated, else the last step seen (``None`` before the first step).
    """

    def __init__(self, config: Any, dispatch: Callable[[List[Alert]], None],
                 current_step: Callable[[], Optional[int]]) -> None:
        self.config = config
        self._dispatch = dispatch
        self._current_step = current_step
        self.counts: Dict[str, int] = defaultdict(int)
        self._reported: set = set()
        self._defer = False
        self._deferred: Optional[SpherewatchError] = None

    def report(self, part: str, exc: BaseException, consequence: str = "skipped") -> None:
        """Report a failure of ``part`` once (log + alert channels), or raise under ``strict``."""
        self.counts[part] += 1
        if self.config.strict:
            err = SpherewatchError(f"spherewatch {part} failed: {type(exc).__name__}: {exc}")
            if self._defer:  # raise_deferred() raises it once this rank has reached every collective
                if self._deferred is None:
                    err.__cause__ = exc
                    self._deferred = err
                return
            raise err from exc
        if part in self._reported:
            return
        self._reported.add(part)
        logger.error("spherewatch: %s failed (%s: %s); %s. Training continues.", part, type(exc).__name__, exc,
                     consequence, exc_info=exc)
        step = self._current_step()
        alert = Alert(
            rule="monitor_fault",
            key=f"{self.config.prefix}/monitor/{part}",
            value=float("nan"),
            step=-1 if step is None else step,
            severity="warning",
            message=f"spherewatch {part} failed ({type(exc).__name__}: {exc}); {consequence}. Training continues.",
        )
        try:
            self._dispatch([alert])
        except Exception:  # pragma: no cover - the dispatcher already isolates channels
            pass

    def recovered(self, part: str) -> None:
        """``part`` works again: a later failure of it is reported again."""
        self._reported.discard(part)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Under ``strict`` in a distributed evaluation: hold the first failure instead of raising it (raising at
        once would leave the other ranks waiting in a collective); :meth:`raise_deferred` raises it."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def raise_deferred(self) -> None:
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
