"""From metric values to delivered alerts: rules -> state machine -> channels, with a bounded history.

:class:`AlertPipeline` owns the :class:`~spherewatch.alerts.AlertEngine` (one state machine per rule and key: a
condition that persists is one open alert, see its docstring) and the channels an alert is delivered to:

* the :class:`~spherewatch.alerts.LoggingChannel` -- each alert once, as a ``CollapseWarning`` / ``MonitorFault``
  (``warn=True``, the default) or as one log record (``warn=False``); on rank zero only for collapse alerts, on
  every rank for faults (a rank's own failure is visible where it happened);
* the user's callables (``on_alert``), on every rank;
* the webhook (``webhook_url`` or ``SPHEREWATCH_WEBHOOK_URL``), on rank zero only.

"Resolved" events go to the logging channel (one ``info`` record), the sinks (``log_alert``, ``status ==
"resolved"``) and :attr:`history`; callables, the webhook and the list ``Monitor.step`` returns get only alerts
that fired (new ones and reminders), so code that acts on an alert never acts on a resolution.

A warning a ``warnings`` filter escalated to an error (``warnings.simplefilter("error", CollapseWarning)``) is
held until :meth:`raise_escalated` -- the Monitor calls it at the very end of ``step()``, after the alert was
written to the sinks and every collective was reached -- so it is raised in the user's code, from
``mon.step(...)``, and nothing is lost.

:attr:`history` keeps the last :data:`HISTORY_LIMIT` alert events in memory (``Monitor.alerts``); the sinks keep
the full record.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence

from spherewatch import distributed as dist_utils
from spherewatch.alerts.alert import Alert
from spherewatch.alerts.channels import AlertDispatcher, CallableChannel, LoggingChannel
from spherewatch.alerts.engine import AlertEngine
from spherewatch.alerts.webhook import WebhookChannel

__all__ = ["AlertPipeline", "HISTORY_LIMIT"]

#: Alert events (fired, reminders, resolved) kept in memory; the sinks keep every one.
HISTORY_LIMIT = 1000


class _RankZeroChannel:
    """Deliver through ``inner`` on rank zero only (a webhook posts once per alert, not once per rank); alerts of a
    kind in ``every_rank`` go through on every rank."""

    def __init__(self, inner: Any, every_rank: Sequence[str] = ()) -> None:
        self.inner = inner
        self.every_rank = tuple(every_rank)

    def send(self, alert: Alert) -> None:
        if getattr(alert, "kind", "collapse") in self.every_rank or dist_utils.rank() == 0:
            self.inner.send(alert)

    def close(self, timeout: float = 5.0) -> None:
        self.inner.close(timeout)

    def __repr__(self) -> str:
        return f"RankZero({self.inner!r})"


class _FiredOnly:
    """Deliver only alerts that fired (new ones and reminders), not "resolved" events: code that acts on an alert
    (a callable that stops a job, a webhook that pages someone) must never act on a resolution."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def send(self, alert: Alert) -> None:
        if getattr(alert, "status", "fired") != "resolved":
            self.inner.send(alert)

    def close(self, timeout: float = 5.0) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close(timeout)

    def __repr__(self) -> str:
        return repr(self.inner)


class AlertPipeline:
    """Rules, state machine and channels of one Monitor (see the module docstring).

    Args:
        config: the :class:`~spherewatch.MonitorConfig`.
        callbacks: user callables called with every alert event (on every rank).
        faults: the Monitor's :class:`~spherewatch.faults.FaultReporter` (channel and rule failures go there).
    """

    def __init__(self, config: Any, callbacks: List[Callable[[Alert], Any]], faults: Any) -> None:
        self.config = config
        self.faults = faults
        self.engine = AlertEngine(config.alert_rules, prefix=config.prefix,
                                  loss_family=getattr(config, "loss_family", None), default_tap=config.default_tap,
                                  key_scheme=config.key_scheme)
        channels: List[Any] = [_RankZeroChannel(LoggingChannel(warn=config.warn), every_rank=("fault",))]
        channels += [_FiredOnly(CallableChannel(fn)) for fn in callbacks]
        url = config.webhook_url.get_secret_value() if config.webhook_url is not None else os.environ.get(
            "SPHEREWATCH_WEBHOOK_URL"
        )
        if url:
            channels.append(_FiredOnly(_RankZeroChannel(WebhookChannel(url, timeout=config.webhook_timeout,
                                                                        on_give_up=self._webhook_gave_up))))
        self.dispatcher = AlertDispatcher(channels, strict=config.strict, on_error=self._channel_error)
        self._history: Deque[Alert] = deque(maxlen=HISTORY_LIMIT)
        self._escalated: Optional[Warning] = None

    # ------------------------------------------------------------------ delivery
    def update(self, step: int, values: Dict[str, float]) -> List[Alert]:
        """Run the rules on one evaluation's values, deliver what they emit, and return it."""
        try:
            emitted = list(self.engine.update(step, values))
        except Exception as exc:
            self.faults.report("alerts", exc, "alert rules were skipped at this step")
            return []
        self.faults.recovered("alerts")
        if emitted:
            self._history.extend(emitted)
            self.dispatch(emitted)
        return emitted

    def requested_step(self, after: int) -> Optional[int]:
        """The next step a rule asked to be evaluated at outside the schedule (``AlertEngine.requested_step``)."""
        try:
            return self.engine.requested_step(after)
        except Exception as exc:  # never lets the host loop down: the schedule alone then
            self.faults.report("alerts", exc, "an extra evaluation asked for by a rule was skipped")
            return None

    def mark_change(self, step: int, what: str, settle_steps: int) -> None:
        """A recipe change the user marked (``AlertEngine.mark_change``); bad arguments raise ``ValueError``."""
        self.engine.mark_change(step, what, settle_steps)

    def dispatch(self, alerts: List[Alert]) -> None:
        """Deliver ``alerts`` to every channel; an escalated warning is held for :meth:`raise_escalated`."""
        try:
            self.dispatcher.dispatch(alerts)
        except Warning as escalated:
            if self._escalated is None:
                self._escalated = escalated
        except Exception as exc:  # strict: a channel failed (the dispatcher raises SpherewatchError)
            if self.config.strict:
                raise
            self.faults.report("alert channels", exc)

    def raise_escalated(self) -> None:
        """Raise the first warning a ``warnings`` filter turned into an error since the last call (once)."""
        if self._escalated is not None:
            err, self._escalated = self._escalated, None
            raise err

    def _webhook_gave_up(self, alert: Alert, exc: Exception) -> None:
        """An alert the webhook could not deliver (called from its thread): a monitor fault like any other; under
        ``strict`` it is raised by the next ``Monitor.step`` (it cannot be raised into the training thread from here)."""
        if self.config.strict:
            self.faults.defer("webhook", exc)
            return
        self.faults.report("webhook", exc, "that alert was not delivered")

    def _channel_error(self, channel: Any, exc: BaseException) -> None:
        """Count a channel failure (the dispatcher already logged it once)."""
        inner = channel
        while hasattr(inner, "inner"):
            inner = inner.inner
        self.faults.counts[f"channel:{type(inner).__name__}"] += 1

    # ------------------------------------------------------------------ state
    @property
    def history(self) -> Sequence[Alert]:
        """The last :data:`HISTORY_LIMIT` alert events, oldest first."""
        return self._history

    def state_dict(self) -> Dict[str, Any]:
        return {"alert_engine": self.engine.state_dict(), "alerts": [a.to_dict() for a in self._history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "alert_engine" in state:
            self.engine.load_state_dict(state["alert_engine"])
        self._history = deque((Alert.from_dict(a) for a in state.get("alerts", []) or []), maxlen=HISTORY_LIMIT)

    def close(self, timeout: float = 5.0) -> None:
        self.dispatcher.close(timeout)
