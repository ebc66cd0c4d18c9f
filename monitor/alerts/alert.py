"""The :class:`Alert` record passed to channels and sinks."""
from __future__ import annotations

import dataclasses
import textwrap
import time as _time
from typing import Any, Dict, Literal, Optional, Tuple

__all__ = ["Alert", "Severity", "SEVERITIES", "WIDTH", "split_message"]

#: The printed form of an alert (``str(alert)``: the warning, the log record, the demo's summary) wraps at this width.
WIDTH = 120
#: The headline's first line leaves room for what prints before it: a warning's ``file.py:12: CollapseWarning: ``.
PREFIX_ROOM = 36

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
        """A short multi-line form, each line at most :data:`WIDTH` characters: the headline (severity, step, what
        happened), then ``what it means:`` and ``check:`` lines when the message carries advice. A fault and a
        resolution stay one line, as written by the part that failed and the rule that cleared.

        Example:
            >>> print(Alert("mean_cosine_collapse", "spherewatch/mean_cosine", 0.93, 40, message=(
            ...     "mean_cosine fell into the collapse zone at step 40 (tap 'embeddings'): 0.93, within 0.1 of the "
            ...     "collapsed value 1 and not recovering. embeddings are becoming parallel. Check the learning rate.")))
            [spherewatch warning] step 40: mean_cosine fell into the collapse zone: 0.93, within
                0.1 of the collapsed value 1 and not recovering
              what it means: embeddings are becoming parallel
              check: the learning rate
        """
        if self.kind == "fault":  # the message already starts with "spherewatch: <part> failed"; its own lines
            return f"{self.message or self.rule} (step {self.step})"
        if self.status == "resolved":
            return (f"[spherewatch resolved] step {self.step}: {self.rule} on {self.key} cleared "
                    f"({self.key}={self.value:.4g}, held for {self.count} sample(s))")
        again = f" (still open, {self.count} samples)" if self.count > 1 else ""
        headline, what, check = split_message(self.message or self.rule, self.key)
        headline = headline.replace(f" at step {self.step} ", " ").replace(f" at step {self.step}", "")
        headline = headline.replace(" (tap 'embeddings')", "")  # the default tap: the key says it
        if not what and not check:
            headline = f"{headline} ({self.key}={self.value:.4g})"
        lines = [_wrap(f"[spherewatch {self.severity}] step {self.step}: {headline}{again}", first=PREFIX_ROOM)]
        if what:
            lines.append(_wrap(f"what it means: {what}", "  "))
        if check:
            lines.append(_wrap(f"check: {check}", "  "))
        return "\n".join(lines)


def _wrap(text: str, indent: str = "", first: int = 0) -> str:
    """``text`` in lines of at most :data:`WIDTH` characters, the first ``first`` characters shorter."""
    lines = textwrap.wrap(" " * first + text, WIDTH, initial_indent=indent, subsequent_indent=indent + "    ",
                          break_on_hyphens=False, break_long_words=True)
    if first and lines:
        lines[0] = lines[0].lstrip(" ")
    return "\n".join(lines)


def split_message(message: str, key: str = "") -> Tuple[str, str, str]:
    """``(what happened, what it means, what to check)`` of an alert's message.

    The rules write ``<what happened>: <details>. <what it means>. Check <what to check>.`` (the meaning is the
    metric's hint in :mod:`spherewatch.catalogue`, the check its advice, :mod:`spherewatch.alerts.advice`); a message
    in another form is all headline.

    Example:
        >>> split_message("x rose to 0.5 (tap 'e'): 0.5 above 0.4. spread is lost. Check the lr.")
        ("x rose to 0.5 (tap 'e'): 0.5 above 0.4", 'spread is lost', 'the lr')
    """
    text = " ".join(message.split())
    pre, sep, check = text.rpartition("Check ")
    if not sep or (pre and not pre.endswith(" ")):
        pre, check = text, ""
    pre, check = pre.strip(), check.strip().rstrip(".")
    what = ""
    if key:
        from spherewatch.catalogue import hint
        from spherewatch.keys import parse_key

        parts = parse_key(key)
        meaning = hint(parts[1])[0] if parts is not None else ""
        if meaning and pre.endswith(f"{meaning}."):
            what, pre = meaning, pre[: -len(meaning) - 1].strip()
    if not what and (check or pre.count(". ") > 0):
        head, dot, last = pre.rstrip(".").rpartition(". ")
        if dot and check:
            pre, what = head, last
    return pre.rstrip(".").strip().rstrip(":"), what.rstrip(".").strip(), check
