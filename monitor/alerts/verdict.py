"""The one verdict on a run, and the one order of severities: read by the demo, the report and the MLflow sink.

A run's verdict comes from its collapse alerts alone: the alerts that fired (not their resolutions), raised by a
rule on the embeddings' metrics (not a fault of the monitor itself, not a text found in a foreign log). Its words are
public (they open the report, the run's MLflow description and the demo's table):

* ``collapse detected at step 10, critical at step 20`` (the first alert, then the first critical one);
* ``collapse detected at step 20 (critical)`` (the first alert was already critical);
* ``healthy: no alerts in 300 steps`` (``last_step`` known) or ``healthy: no alerts``.

Example:
    >>> from spherewatch.alerts.alert import Alert
    >>> a = Alert("uniformity_degradation", "spherewatch/uniformity", -0.2, 10, "warning", "uniformity rose")
    >>> verdict([a, dataclasses.replace(a, step=20, severity="critical")])
    'collapse detected at step 10, critical at step 20'
    >>> verdict([], last_step=300)
    'healthy: no alerts in 300 steps'
    >>> worst_severity(["warning", "info"])
    'warning'
"""
from __future__ import annotations

import dataclasses  # noqa: F401 - used by the doctest
from typing import Any, Dict, Iterable, List, Optional

from spherewatch.alerts.alert import SEVERITIES

__all__ = ["OK", "SEVERITY_RANK", "collapse_alerts", "is_collapse_alert", "severity_rank", "verdict", "worst_severity"]

#: The state of a run with no open alert.
OK = "ok"
#: ``ok`` < ``info`` < ``warning`` < ``critical``: the one order every part of spherewatch compares severities in.
SEVERITY_RANK: Dict[str, int] = {OK: 0, **{s: i + 1 for i, s in enumerate(SEVERITIES)}}
#: Rules whose alerts say nothing about the embeddings: the monitor's own faults, texts read from a foreign log.
_NOT_COLLAPSE_RULES = ("monitor_fault", "text")


def severity_rank(severity: Any) -> int:
    """The rank of ``severity`` in :data:`SEVERITY_RANK`; an unknown one ranks as ``warning`` (never ignored)."""
    return SEVERITY_RANK.get(str(severity), SEVERITY_RANK["warning"])


def worst_severity(severities: Iterable[Any], default: str = OK) -> str:
    """The worst of ``severities`` (``default`` when there is none)."""
    worst = default
    for s in severities:
        if severity_rank(s) > severity_rank(worst):
            worst = str(s)
    return worst


def is_collapse_alert(alert: Any) -> bool:
    """Whether ``alert`` (fired or its resolution) is about the embeddings: not a fault of the monitor, not a change of
    regime (``kind="regime_change"``: the geometry changed, which is not a collapse; a one-shot event, never open), not
    a text read from a foreign log. The one test the verdict, the alert counts and the alert states of every sink
    apply."""
    return getattr(alert, "kind", "collapse") not in ("fault", "regime_change") and alert.rule not in _NOT_COLLAPSE_RULES


def collapse_alerts(alerts: Iterable[Any]) -> List[Any]:
    """The alerts that fired on the embeddings (:func:`is_collapse_alert`), without their resolutions."""
    return [a for a in alerts if getattr(a, "status", "fired") != "resolved" and is_collapse_alert(a)]


def verdict(alerts: Iterable[Any], *, last_step: Optional[int] = None) -> str:
    """One line on a run from its alerts (any order): see the module docstring for the words."""
    fired = collapse_alerts(alerts)
    if not fired:
        return f"healthy: no alerts in {last_step} steps" if last_step is not None else "healthy: no alerts"
    first = min(a.step for a in fired)
    text = f"collapse detected at step {first}"
    critical = [a.step for a in fired if a.severity == "critical"]
    if critical:
        text += f", critical at step {min(critical)}" if min(critical) != first else " (critical)"
    return text
