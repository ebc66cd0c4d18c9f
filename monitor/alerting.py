"""Alert rules, the channels they are delivered to, and the record of what fired."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Sequence

from spherewatch import distributed as dist_utils
from spherewatch.alerts.alert import Alert

__all__ = ["AlertPipeline"]


class _RankZeroChannel:
    """Deliver through ``inner`` on rank zero only (a webhook posts once per alert, not once per rank)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def send(self, alert: Alert) -> None:
        if dist_utils.rank() == 0:
            self.inner.send(alert)

    def close(self, timeout: float = 5.0) -> None:
        self.inner.close(timeout)

    def __repr__(self) -> str:
        return f"RankZero({self.inner!r})"


class AlertPipeline:
    """Runs the rules on each evaluation's values and delivers what fired to the channels: the log (and a
    ``CollapseWarning``), the webhook (rank zero only) and the user's callables (every rank: they may act locally).

    Args:
        config: the Monitor's config (rules, webhook, ``warn``, ``strict``, ``prefix``).
        callbacks: user callables, each called with every fired :class:`Alert`.
        faults: where failures of the rules and channels are reported.
    """

    def __init__(self, config: Any, callbacks: List[Callable[[Alert], Any]], faults: Any) -> None:
        from spherewatch.alerts.channels import AlertDispatcher, CallableChannel, LoggingChannel
        from spherewatch.alerts.engine import AlertEngine

        self.config = config
        self._faults = faults
        self.engine = AlertEngine(config.alert_rules, prefix=config.prefix)
        channels: List[Any] = [_RankZeroChannel(LoggingChannel(warn=config.warn))]
        channels += [CallableChannel(fn) for fn in callbacks]
        url = config.webhook_url.get_secret_value() if config.webhook_url is not None else os.environ.get(
            "SPHEREWATCH_WEBHOOK_URL"
        )
        if url:
            from spherewatch.alerts.webhook import WebhookChannel

            channels.append(_RankZeroChannel(WebhookChannel(url, timeout=config.webhook_timeout)))
        self._dispatcher = AlertDispatcher(channels, strict=config.strict, on_error=self._channel_error)
        self.history: List[Alert] = []

    def _channel_error(self, channel: Any, exc: BaseException) -> None:
        """Count a channel failure (the dispatcher already logged it once)."""
        inner = getattr(channel, "inner", channel)
        self._faults.counts[f"channel:{type(inner).__name__}"] += 1

    def update(self, step: int, values: Dict[str, float]) -> List[Alert]:
        """Evaluate the rules on ``values`` (logged at ``step``); deliver and record the alerts that fire."""
        try:
            fired = list(self.engine.update(step, values))
        except Exception as exc:
            self._faults.report("alerts", exc, "alert rules were skipped at this step")
            return []
        if fired:
            self.history.extend(fired)
            self.dispatch(fired)
        return fired

    def dispatch(self, alerts: Sequence[Alert]) -> None:
        try:
            self._dispatcher.dispatch(list(alerts))
        except Exception as exc:  # only under strict: the dispatcher isolates each channel otherwise
            self._faults.report("alert channels", exc)

    def state_dict(self) -> Dict[str, Any]:
        return {"alert_engine": self.engine.state_dict(), "alerts": [a.to_dict() for a in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "alert_engine" in state:
            self.engine.load_state_dict(state["alert_engine"])
        self.history = [Alert.from_dict(a) for a in state.get("alerts", [])]

    def close(self, timeout: float = 5.0) -> None:
        self._dispatcher.close(timeout)
