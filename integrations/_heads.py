"""Head taps in the adapters (issue 18): the assignment head's logits out of a training step's returned dict.

``head=`` of the Lightning callback names where they are::

    MonitorCallback(output_key="z", head={"teacher": "teacher_logits", "student": "student_logits",
                                          "teacher_temp": "teacher_temp", "student_temp": 0.1})

``teacher`` (required), ``student`` and ``center`` are keys of the dict ``training_step`` returns; ``teacher_temp``
and ``student_temp`` are numbers, callables or keys of that dict (e.g. a warm-up schedule's current value);
``probs`` says the teacher (and student) are probabilities (SwAV's codes); ``tap`` names the tap (``"head"``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional

import torch

from spherewatch.heads import DEFAULT_HEAD_TAP
from spherewatch.monitor import Monitor

__all__ = ["check_head_spec", "observe_head_from"]

_FIELDS = {"teacher", "student", "center", "teacher_temp", "student_temp", "probs", "tap"}


def check_head_spec(head: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``head`` validated (a dict with at least ``teacher``), or ``None``."""
    if head is None:
        return None
    if not isinstance(head, Mapping) or not isinstance(head.get("teacher"), str):
        raise ValueError(f"`head=` must be a dict naming at least the key of the teacher's logits in the step's "
                         f"returned dict, e.g. {{'teacher': 'teacher_logits'}}; got {head!r}.")
    unknown = set(head) - _FIELDS
    if unknown:
        raise ValueError(f"`head=` has unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}.")
    return {"tap": DEFAULT_HEAD_TAP, "teacher_temp": 1.0, "student_temp": 1.0, "probs": False, **dict(head)}


def _temp(value: Any, outputs: Mapping) -> Any:
    if isinstance(value, str):
        got = outputs.get(value)
        return float(got.item() if isinstance(got, torch.Tensor) else got)
    return value


def observe_head_from(mon: Monitor, outputs: Any, head: Dict[str, Any], where: str) -> None:
    """Hand the head's tensors in ``outputs`` (a step's returned dict) to ``mon.observe_head`` (a fault of ``mon``,
    never an exception, when they are missing)."""
    tap = head["tap"]
    if not isinstance(outputs, Mapping) or not isinstance(outputs.get(head["teacher"]), torch.Tensor):
        got = f"a dict with keys {list(outputs)}" if isinstance(outputs, Mapping) else type(outputs).__name__
        mon.report_fault(f"capture:{tap}", KeyError(
            f"`{where}` returned {got}, without a tensor under the head's teacher key {head['teacher']!r}"),
            "nothing is captured from it")
        return
    try:
        student = outputs.get(head["student"]) if head.get("student") else None
        center = outputs.get(head["center"]) if head.get("center") else None
        mon.observe_head(outputs[head["teacher"]], student, teacher_temp=_temp(head["teacher_temp"], outputs),
                         student_temp=_temp(head["student_temp"], outputs), tap=tap, center=center,
                         probs=bool(head["probs"]))
    except Exception as exc:
        mon.report_fault(f"capture:{tap}", exc, "this batch was not recorded")
