"""Alert channels (where a fired alert goes) and the dispatcher that fans alerts out to them."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from spherewatch.alerts.alert import Alert
from spherewatch.errors import CollapseWarning, MonitorFault, SpherewatchError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AlertDispatcher", "CallableChannel", "Channel", "LoggingChannel"]

_log = logging.getLogger("spherewatch.alerts")


class Channel:
    """Base class of alert channels: :meth:`send` one alert, :meth:`close` when done.

    ``send`` must return quickly; a channel that talks to the network queues the alert and delivers it in the
    background (see :class:`~spherewatch.alerts.webhook.WebhookChannel`). Channels are context managers.
    """

    def send(self, alert: Alert) -> None:
        """Deliver (or queue) one alert."""
        raise NotImplementedError(f"{type(self).__name__} must implement send(alert)")

    def close(self, timeout: float = 5.0) -> None:
        """Flush and release resources, waiting at most ``timeout`` seconds. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _package_dirs() -> tuple[str, ...]:
    import spherewatch

    dirs = [os.path.dirname(os.path.abspath(spherewatch.__file__))]
    try:
        import spherewatch.integrations as integrations

        dirs.append(os.path.dirname(os.path.abspath(integrations.__file__)))
    except Exception:  # noqa: BLE001 - pragma: no cover
        pass
    return tuple(d + os.sep for d in dirs)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called from here that points at the first frame outside
    spherewatch (the user's ``mon.step(...)`` line, or the framework's callback call under an adapter)."""
    dirs = _package_dirs()
    frame = sys._getframe(1)  # the caller of user_stacklevel (where warnings.warn is called) is level 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(dirs):
        frame = frame.f_back
        level += 1
    return level


class LoggingChannel(Channel):
    """Reports every alert exactly once: as a warning (``warn=True``, the default) **or** as a log record.

    * Collapse alerts (``kind="collapse"``) that fire: a :class:`~spherewatch.errors.CollapseWarning` pointing at
      the user's line that called into spherewatch (filter or escalate it with the ``warnings`` module: with
      ``warnings.simplefilter("error", CollapseWarning)`` it is raised, see :class:`AlertDispatcher`), or with
      ``warn=False`` one ``logger.warning`` record. ``info`` alerts are always an ``info`` record, never a warning.
    * Faults of the monitor itself (``kind="fault"``): a :class:`~spherewatch.errors.MonitorFault` warning, or
      with ``warn=False`` one ``logger.error`` record. A filter that turns warnings into errors (``python -W
      error``) never makes a fault an exception in the training loop: the fault becomes the ``logger.error``
      record instead (only ``strict=True`` raises).
    * Resolved alerts (``status="resolved"``): one ``info`` record, never a warning.

    Args:
        logger: a logger or a logger name.
        warn: deliver as a warning instead of a log record.

    Example:
        >>> from spherewatch.alerts import Alert, LoggingChannel
        >>> LoggingChannel(warn=False).send(Alert("demo", "spherewatch/uniformity", -0.5, 10))
    """

    def __init__(self, logger: str | logging.Logger = "spherewatch", warn: bool = True) -> None:
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        if not isinstance(logger, logging.Logger):
            raise TypeError(f"`logger` must be a logging.Logger or a logger name, got {type(logger).__name__}.")
        self.logger = logger
        self.warn = bool(warn)

    def send(self, alert: Alert) -> None:
        text = str(alert)
        fault = getattr(alert, "kind", "collapse") == "fault"
        if getattr(alert, "status", "fired") == "resolved" or (alert.severity == "info" and not fault):
            self.logger.info(text)
            return
        if self.warn and fault:
            try:
                warnings.warn(text, MonitorFault, stacklevel=user_stacklevel())
            except Warning:  # `-W error` made it an exception: a fault of the monitor never enters the training loop
                self.logger.error(text)
        elif self.warn:
            warnings.warn(text, CollapseWarning, stacklevel=user_stacklevel())
        elif fault:
            self.logger.error(text)
        else:
            self.logger.warning(text)

    def __repr__(self) -> str:
        return f"LoggingChannel(logger={self.logger.name!r}, warn={self.warn})"


class CallableChannel(Channel):
    """Calls ``fn(alert)`` for every alert (synchronously: keep it quick).

    Example:
        >>> from spherewatch.alerts import Alert, CallableChannel
        >>> seen = []
        >>> CallableChannel(seen.append).send(Alert("demo", "spherewatch/uniformity", -0.5, 10))
        >>> seen[0].step
        10
    """

    def __init__(self, fn: Callable[[Alert], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"CallableChannel needs a callable taking one Alert, got {type(fn).__name__}.")
        self.fn = fn

    def send(self, alert: Alert) -> None:
        self.fn(alert)

    def __repr__(self) -> str:
        return f"CallableChannel({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"


class AlertDispatcher:
    """Fans every alert out to every channel exactly once; a failing channel never stops the others.

    When a channel's ``send`` raises, the dispatcher goes on with the other channels and the next alerts (the
    failing channel keeps being tried, since it may recover). The first failure of each channel is reported
    once: one ``logging`` error on ``spherewatch.alerts`` and one call ``on_error(channel, exc)``; later failures
    are only counted in :attr:`errors`. With ``strict=True`` the first failure raises
    :class:`~spherewatch.errors.SpherewatchError` instead (for tests and debugging).

    Args:
        channels: the channels.
        strict: raise on a channel failure instead of reporting it.
        on_error: called with ``(channel, exception)`` on the first failure of each channel.

    Example:
        >>> from spherewatch.alerts import Alert, AlertDispatcher, CallableChannel
        >>> got = []
        >>> dispatcher = AlertDispatcher([CallableChannel(got.append)])
        >>> dispatcher.dispatch([Alert("demo", "spherewatch/uniformity", -0.5, 10)])
        >>> len(got)
        1
    """

    def __init__(
        self,
        channels: Iterable[Channel],
        *,
        strict: bool = False,
        on_error: Callable[[Channel, BaseException], Any] | None = None,
    ) -> None:
        self.channels: list[Channel] = list(channels)
        for ch in self.channels:
            if not callable(getattr(ch, "send", None)):
                raise TypeError(f"Every channel needs a send(alert) method, got {type(ch).__name__}.")
        if on_error is not None and not callable(on_error):
            raise TypeError(f"`on_error` must be callable(channel, exception), got {type(on_error).__name__}.")
        self.strict = bool(strict)
        self.on_error = on_error
        #: failures per channel (index in :attr:`channels`)
        self.errors: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def dispatch(self, alerts: Alert | Iterable[Alert]) -> None:
        """Send each alert to each channel once, in order.

        A warning raised by a channel (``warnings.simplefilter("error", CollapseWarning)`` escalates the
        :class:`LoggingChannel`'s warning) is not a channel failure: the other channels and alerts are still
        delivered, then the first such warning is raised.

        Raises:
            Warning: the escalated warning (e.g. :class:`~spherewatch.errors.CollapseWarning`).
            SpherewatchError: only with ``strict=True``, on the first channel failure.
        """
        if isinstance(alerts, Alert):
            alerts = (alerts,)
        escalated: Warning | None = None
        with self._lock:
            for alert in alerts:
                for i, ch in enumerate(self.channels):
                    try:
                        ch.send(alert)
                    except Warning as err:  # a warnings filter turned the alert into an error: the user's choice
                        escalated = escalated or err
                    except Exception as err:  # noqa: BLE001 - a channel must never take training down
                        self._failed(i, ch, "send", err)
        if escalated is not None:  # raised once every channel has had every alert
            raise escalated

    def close(self, timeout: float = 5.0) -> None:
        """Close every channel, sharing one ``timeout`` (seconds) among them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, float(timeout))
        for i, ch in enumerate(self.channels):
            close = getattr(ch, "close", None)
            if close is None:
                continue
            try:
                close(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as err:  # noqa: BLE001
                self._failed(i, ch, "close", err)

    def _failed(self, i: int, ch: Channel, what: str, err: BaseException) -> None:
        first = i not in self.errors
        self.errors[i] = self.errors.get(i, 0) + 1
        if self.strict:
            raise SpherewatchError(f"alert channel {ch!r} failed in {what}(): {type(err).__name__}: {err}") from err
        if not first:
            return
        _log.error(
            "alert channel %r failed in %s(): %s: %s (reported once; the channel keeps being tried)",
            ch, what, type(err).__name__, err,
        )
        if self.on_error is not None:
            try:
                self.on_error(ch, err)
            except Exception:  # noqa: BLE001
                _log.exception("the on_error callback of AlertDispatcher raised")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AlertDispatcher(channels={self.channels!r}, strict={self.strict})"
