"""A sink's outage: whether one is in progress, its backoff, and what is reported about it (once per outage).

Example:
    >>> t = [0.0]
    >>> errors = []
    >>> outage = Outage("mlflow", retry_initial=1.0, retry_max=4.0, clock=lambda: t[0],
    ...                 on_error=lambda name, exc: errors.append(name))
    >>> outage.fault(ConnectionError("down"), "sink 'mlflow' failed")
    >>> outage.active, outage.next_retry, errors
    (True, 1.0, ['mlflow'])
    >>> outage.fault(ConnectionError("down"), "sink 'mlflow' failed")  # still down: backoff, no second report
    >>> outage.next_retry, errors
    (2.0, ['mlflow'])
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

__all__ = ["Outage"]

logger = logging.getLogger("spherewatch.sinks")


class Outage:
    """The outage state of sink ``name``: ``fault`` starts one (reported once: a warning and ``on_error``) or, during
    one, doubles the backoff (``retry_initial`` up to ``retry_max`` seconds); ``recovered`` ends it (logged once and
    ``on_recovered``); ``drop`` counts records given up on (the first one reported)."""

    def __init__(self, name: str, *, retry_initial: float = 1.0, retry_max: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_error: Optional[Callable[[str, BaseException], None]] = None,
                 on_recovered: Optional[Callable[[str], None]] = None) -> None:
        self.name = name
        self._initial, self._max, self._clock = retry_initial, retry_max, clock
        self._on_error, self._on_recovered = on_error, on_recovered
        self.active = False
        self.since = 0.0
        self.delay = retry_initial
        self.next_retry = -math.inf  #: clock time before which the backlog is not retried
        self.dropped = 0  #: records given up on
        self.full_logged = False  #: the backlog-full warning of this outage was logged

    def due(self) -> bool:
        return self._clock() >= self.next_retry

    def backoff(self) -> None:
        """Still failing: double the delay (up to ``retry_max``) and push the next retry out."""
        self.delay = min(self._max, self.delay * 2)
        self.next_retry = self._clock() + self.delay

    def fault(self, exc: BaseException, what: str, where: str = "") -> None:
        """Start an outage (report once) or, during one, back off."""
        if self.active:
            self.backoff()
            return
        self.active = True
        self.since = self._clock()
        self.delay = self._initial
        self.next_retry = self.since + self.delay
        logger.warning(
            "spherewatch: %s (%s: %s); training continues, records are queued and retried with backoff "
            "(first retry in %.3gs)%s.", what, type(exc).__name__, exc, self.delay, where,
        )
        self._error(exc)

    def recovered(self, delivered: int) -> None:
        """The backlog is delivered (``delivered`` records now): end the outage, if one is in progress."""
        if not self.active:
            if delivered:
                logger.info("spherewatch: sink %r: delivered %d spooled record(s) from an earlier run.",
                            self.name, delivered)
            return
        logger.info("spherewatch: sink %r recovered after %.1fs; delivered %d queued record(s), in order.",
                    self.name, self._clock() - self.since, delivered)
        self.active = self.full_logged = False
        self.delay = self._initial
        self.next_retry = -math.inf
        if self._on_recovered is not None:
            try:
                self._on_recovered(self.name)
            except Exception:
                logger.warning("spherewatch: the on_recovered callback of sink %r raised; ignored.", self.name,
                               exc_info=True)

    def drop(self, what: str, exc: BaseException) -> None:
        """A record the sink rejects as malformed (or that is not a number): dropped, the first one reported."""
        self.dropped += 1
        if self.dropped == 1:
            logger.error(
                "spherewatch: sink %r rejected a %s (%s: %s); dropped it, since retrying cannot fix a malformed "
                "record. Later drops are logged at debug level and counted in `.dropped`.",
                self.name, what, type(exc).__name__, exc,
            )
            self._error(exc)
        else:
            logger.debug("spherewatch: sink %r dropped a %s (%s: %s).", self.name, what, type(exc).__name__, exc)

    def _error(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(self.name, exc)
        except Exception:
            logger.warning("spherewatch: the on_error callback of sink %r raised; ignored.", self.name, exc_info=True)
