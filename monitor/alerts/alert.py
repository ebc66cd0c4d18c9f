"""The :class:`Alert` record passed to channels and sinks."""
from __future__ import annotations

import dataclasses
import time as _time
from typing import Any, Dict, Literal

__all__ = ["Alert", "Severity", "SEVERITIES"]

Severity = Literal["info", "warning", "critical"]
SEVERITIES = ("info", "warning", "critical")


@dataclasses.dataclass(frozen=True)
class Alert:
    """One fired alert.

    Attributes:
        rule: name of the rule that fired (e.g. ``"uniformity_degradation"``).
        key: full log key the rule watched (e.g. ``"spherewatch/embeddings/uniformity"``).
        value: the value that triggered it.
        step: the global step of the sample.
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        message: human-readable text (what happened and what it means).
        time: wall-clock time (Unix seconds) when it fired.
        action: ``"log"`` (report only) or ``"stop"`` (sets ``Monitor.should_stop``).
    """

    rule: str
    key: str
    value: float
    step: int
    severity: Severity = "warning"
    message: str = ""
    time: float = dataclasses.field(default_factory=_time.time)
    action: Literal["log", "stop"] = "log"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Alert":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def __str__(self) -> str:
        return f"[spherewatch {self.severity}] step {self.step}: {self.message or self.rule} ({self.key}={self.value:.4g})"
