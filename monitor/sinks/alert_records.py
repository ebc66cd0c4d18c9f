"""What the sinks share about alert records: the identity of a record (a record delivered again after a retry, a
spool replay or a resumed run is recognised by it), the bounded set of the ones a sink has handled, and -- for the
hosted trackers' own alert channels (W&B's ``run.alert``, trackio's ``alert``) -- the title, text and level of one
tracker alert per episode."""
from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from typing import Any, NamedTuple

from spherewatch.alerts.verdict import is_collapse_alert

__all__ = ["KEEP_ALERT_IDS", "LEVELS", "AlertFacts", "SeenAlerts", "alert_facts", "alert_id", "alert_text",
           "alert_title"]

#: How many alert identities a sink remembers (the latest; older redeliveries are rare: the spool replays in order).
KEEP_ALERT_IDS = 4096
#: A tracker's alert level per severity (W&B's ``AlertLevel`` names; trackio's are the same).
LEVELS = {"info": "INFO", "warning": "WARN", "critical": "ERROR"}
_MAX_TITLE = 63


def alert_id(alert: Any) -> tuple:
    """The identity of an alert record: the same for every delivery of one record, different for every event (a
    reminder and the resolution of an alert have their own time and status)."""
    return (alert.rule, alert.key, alert.step, alert.time, alert.severity, getattr(alert, "status", "fired"))


class SeenAlerts:
    """The identities (:func:`alert_id`) of the latest :data:`KEEP_ALERT_IDS` alert records a sink handled.

    Example:
        >>> seen = SeenAlerts(keep=2)
        >>> [seen.add(k) for k in ("a", "a", "b", "c", "a")]
        [True, False, True, True, True]
    """

    def __init__(self, keep: int = KEEP_ALERT_IDS) -> None:
        self._ids: OrderedDict[Any, None] = OrderedDict()
        self._keep = keep

    def __contains__(self, key: Any) -> bool:
        return key in self._ids

    def add(self, key: Any) -> bool:
        """Remember ``key``; ``True`` when it was not remembered yet."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self._keep:
            self._ids.popitem(last=False)
        return True


class AlertFacts(NamedTuple):
    """What a sink needs to know of an alert record (:func:`alert_facts`)."""

    id: tuple
    resolved: bool  # a resolution
    fault: bool  # a monitor fault (sent on a tracker's alert channel like a new alert)
    counted: bool  # a collapse alert: counted and kept in the alert state (verdict.is_collapse_alert)
    new_episode: bool  # the first event of its episode (``count`` 1, not resolved)


def alert_facts(alert: Any) -> AlertFacts:
    """The :class:`AlertFacts` of ``alert``."""
    resolved = getattr(alert, "status", "fired") == "resolved"
    fault = getattr(alert, "kind", "collapse") == "fault" or alert.rule == "monitor_fault"
    new_episode = not resolved and int(getattr(alert, "count", 1)) <= 1
    return AlertFacts(alert_id(alert), resolved, fault, is_collapse_alert(alert), new_episode)


def alert_title(alert: Any, prefix: str = "spherewatch") -> str:
    """A tracker alert's title: the alert's identity (rule, key and severity), under 64 characters, so that a
    condition that persists is one tracker alert (W&B drops a repeat of a title within ``wait_duration``).

    Example:
        >>> from spherewatch.alerts.alert import Alert
        >>> alert_title(Alert("rank_collapse", "spherewatch/effective_rank", 1.2, 40, "critical"))
        'spherewatch critical: rank_collapse on effective_rank'
    """
    key = str(alert.key)
    short = key[len(prefix.rstrip("/")) + 1:] if key.startswith(prefix.rstrip("/") + "/") else key
    title = f"{prefix.rstrip('/')} {alert.severity}: {alert.rule} on {short}"
    if len(title) > _MAX_TITLE:  # keep the identity: a digest of the full title in place of the cut tail
        digest = hashlib.sha1(title.encode()).hexdigest()[:8]
        title = title[:_MAX_TITLE - 9] + "~" + digest
    return title


def alert_text(alert: Any) -> str:
    """A tracker alert's text: the message, the value at its step, the action, the time it fired."""
    value = f"{alert.value:.6g}" if isinstance(alert.value, float) and math.isfinite(alert.value) else str(alert.value)
    text = f"{alert.message or alert.rule}\n\nstep {alert.step}: {alert.key} = {value} ({alert.severity})"
    if getattr(alert, "action", "log") == "stop":
        text += "; training is asked to stop"
    return text + f"\nfired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(alert.time))}."
