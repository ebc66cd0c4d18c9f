"""The :class:`Alert` record passed to channels and sinks."""
from __future__ import annotations

import dataclasses
import time as _time
from typing import Any, Dict, Literal, Optional

__all__ = ["Alert", "Severity", "SEVERITIES"]

Severity = Literal["info", "warning", "critical"]
SEVERITIES = ("info", "warning", "critical")


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert event.

    Attributes:
        rule: name of the rule that fired (e.g. ``"uniformity_degradation"``); ``"monitor_fault"`` for faults.
        key: full log key the rule watched (e.g. ``"spherewatch/uniformity"``).
        value: the value that triggered it (NaN for faults).
        step: the global step of the sample.
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        message: human-readable text (what happened and what it means).
        time: wall-clock time (Unix seconds) when it fired.
        action: ``"log"`` (report only) or ``"stop"`` (sets ``Monitor.should_stop``).
        kind: ``"collapse"`` (a rule on the embeddings' metrics) or ``"fault"`` (the monitor itself failed: a
            capture, a metric, a sink; emitted as :class:`~spherewatch.errors.MonitorFault`, never as a
            :class:`~spherewatch.errors.CollapseWarning`).
        status: ``"fired"`` (the condition holds: a new alert, or a reminder of an open one) or ``"resolved"``
            (the condition has cleared; the rule's state is back to ``ok``).
        count: samples the condition has held in this episode (1 when it opens; reminders and the resolved event
            carry the total).
        open_severity: after this event, the worst severity among the alerts still open (``"ok"`` when none):
            the state a dashboard should show. ``None`` when unknown (alerts built by hand, faults).
    """

    rule: str
    key: str
    value: float
    step: int
    severity: Severity = "warning"
    message: str = ""
    time: float = dataclasses.field(default_factory=_time.time)
    action: Literal["log", "stop"] = "log"
    kind: Literal["collapse", "fault", "regime_change"] = "collapse"
    status: Literal["fired", "resolved"] = "fired"
    count: int = 1
    open_severity: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Alert":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def __str__(self) -> str:
        if self.kind == "fault":  # the message already starts with "spherewatch: <part> failed"
            return f"{self.message or self.rule} (step {self.step})"
        if self.status == "resolved":
            return (f"[spherewatch resolved] step {self.step}: {self.rule} on {self.key} cleared "
                    f"({self.key}={self.value:.4g}, held for {self.count} sample(s))")
        again = f" (still open, {self.count} samples)" if self.count > 1 else ""
        return (f"[spherewatch {self.severity}] step {self.step}: {self.message or self.rule}{again} "
                f"({self.key}={self.value:.4g})")
