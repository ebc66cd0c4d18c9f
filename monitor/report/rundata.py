"""What a report is made of: one run read back (:class:`RunData`), and the key helpers its readers share.

Example:
    >>> run = RunData("jsonl", "run.jsonl", {"spherewatch/uniformity": [(0, -3.9), (300, -3.8)], "train/loss": []},
    ...               {}, [])
    >>> own_keys(run.scalars, "spherewatch"), last_step(run, "spherewatch")
    (['spherewatch/uniformity'], 300)
    >>> dedup_sorted([(20, "b"), (10, "a"), (20, "c")])
    [(10, 'a'), (20, 'c')]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from spherewatch.alerts.alert import Alert
from spherewatch.alerts.verdict import severity_rank
from spherewatch.keys import is_loss_key, parse_key

__all__ = [
    "ACCEPTED", "DEFAULT_TRACKING_URI", "RunData", "dedup_sorted", "is_spectrum_key", "keep_scalar", "last_step",
    "no_records_error", "own_keys", "sort_alerts",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # same default as MLflowSink
ACCEPTED = (
    "`spherewatch report` takes a JSONL file written by JsonlSink (e.g. runs/exp1/spherewatch.jsonl), a "
    "TensorBoard log dir (e.g. runs/exp1), or an MLflow run id (looked up on tracking_uri / --tracking-uri, "
    f"default {DEFAULT_TRACKING_URI})"
)


@dataclasses.dataclass
class RunData:
    """What a report is made of, read back from one source.

    Attributes:
        kind: ``"jsonl"``, ``"tensorboard"`` or ``"mlflow"``.
        source: where it was read (file, folder, or MLflow run and store), for display.
        scalars: ``{key: [(step, value), ...]}`` sorted by step, one value per step (the last one recorded).
        spectra: ``{key: [(step, eigenvalues), ...]}`` sorted by step.
        alerts: alerts sorted by step (then severity, most severe first).
        notes: remarks shown on the page (e.g. how exact the spectra are).
        name: short name for the title (run folder, file, or MLflow run name).
        params: the run's parameters (the Monitor's ``spherewatch.*`` configuration, the host's hyperparameters)
            where the source keeps them (JSONL ``params`` records, MLflow params).

    Besides the ``<prefix>/<tap>/<metric>`` keys, ``scalars`` holds the host's loss when it was logged beside them
    (keys like ``train/loss``, see :data:`spherewatch.keys.LOSS_PATTERN`).
    """

    kind: str
    source: str
    scalars: Dict[str, List[Tuple[int, float]]]
    spectra: Dict[str, List[Tuple[int, np.ndarray]]]
    alerts: List[Alert]
    notes: List[str] = dataclasses.field(default_factory=list)
    name: str = ""
    params: Dict[str, str] = dataclasses.field(default_factory=dict)


def dedup_sorted(points: Iterable[Tuple[int, Any]]) -> List[Tuple[int, Any]]:
    """Sorted by step, keeping the last value recorded for a step (a resumed run appends to the same file)."""
    by_step: Dict[int, Any] = {}
    for step, value in points:
        by_step[int(step)] = value
    return sorted(by_step.items(), key=lambda kv: kv[0])


def sort_alerts(alerts: Iterable[Alert]) -> List[Alert]:
    """By step, then severity (most severe first, in :data:`spherewatch.alerts.verdict.SEVERITY_RANK`'s order),
    key and rule."""
    return sorted(alerts, key=lambda a: (a.step, -severity_rank(a.severity), a.key, a.rule))


def keep_scalar(key: str, prefix: str) -> bool:
    """Whether the report keeps the scalar ``key``: a metric, or the host's loss logged beside them (not the alert
    counter ``<prefix>/alerts/count``, not the host's other keys)."""
    if parse_key(key, prefix) is None:
        return is_loss_key(key, prefix)
    return True


def own_keys(keys: Iterable[str], prefix: str) -> List[str]:
    """The metric keys among ``keys`` (the host's loss left out)."""
    return [k for k in keys if parse_key(k, prefix) is not None]


def is_spectrum_key(key: str, prefix: str) -> bool:
    """Whether ``key`` is the ``spectrum`` of some tap."""
    parts = parse_key(key, prefix)
    return parts is not None and parts[1] == "spectrum"


def last_step(data: RunData, prefix: str) -> Optional[int]:
    """The last step at which a metric of ``data`` was logged (``None`` if none was)."""
    steps = [s for k in own_keys(data.scalars, prefix) for s, _ in data.scalars[k]]
    return max(steps) if steps else None


def no_records_error(what: str, found: List[str], prefix: str) -> ValueError:
    """The error for a source without spherewatch values: it lists what the source holds instead."""
    if found:
        shown = ", ".join(sorted(found)[:8]) + (", ..." if len(found) > 8 else "")
        return ValueError(
            f"{what} holds no spherewatch values under the prefix {prefix!r} (keys <prefix>/<tap>/<metric>); it "
            f"holds: {shown}. Pass the prefix the Monitor used (prefix=... / MonitorConfig.prefix)."
        )
    return ValueError(f"{what} holds no spherewatch records. {ACCEPTED}.")
