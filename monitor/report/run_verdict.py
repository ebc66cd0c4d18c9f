"""The verdict on a run read back: :func:`spherewatch.alerts.verdict.verdict` on its alerts and its last step.

The words are those of the one verdict (the run's MLflow description and the demo read the same function):
``collapse detected at step 10, critical at step 20`` or ``healthy: no alerts in 300 steps``.
"""
from __future__ import annotations

from spherewatch.alerts.verdict import verdict as alerts_verdict
from spherewatch.report.rundata import RunData, last_step

__all__ = ["verdict"]


def verdict(data: RunData, prefix: str = "spherewatch") -> str:
    """One line: ``collapse detected at step 10, critical at step 20`` or ``healthy: no alerts in 300 steps``.

    Example:
        >>> run = RunData("jsonl", "run.jsonl", {"spherewatch/uniformity": [(0, -3.9), (300, -3.8)]}, {}, [])
        >>> verdict(run)
        'healthy: no alerts in 300 steps'
    """
    return alerts_verdict(data.alerts, last_step=last_step(data, prefix))
