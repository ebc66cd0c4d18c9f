"""A sink that keeps everything in Python lists (tests, notebooks, quick inspection)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from spherewatch.sinks.base import Sink, as_float_array

if TYPE_CHECKING:
    from spherewatch.alerts.alert import Alert

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Keep every logged record in memory.

    Attributes:
        scalars: ``[(step, {key: value}), ...]`` in call order (values as ``float``).
        histograms: ``[(step, key, np.ndarray), ...]`` in call order (copies of the values).
        alerts: ``[Alert, ...]`` in call order.

    Example:
        >>> sink = MemorySink()
        >>> sink.log_scalars(0, {"spherewatch/uniformity": -3.9})
        >>> sink.log_scalars(10, {"spherewatch/uniformity": -3.1, "spherewatch/mean_cosine": 0.2})
        >>> sink.history("spherewatch/uniformity")
        [(0, -3.9), (10, -3.1)]
        >>> sink.last("spherewatch/mean_cosine"), sink.last("missing")
        (0.2, None)
        >>> sink.keys()
        ['spherewatch/uniformity', 'spherewatch/mean_cosine']
    """

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.scalars: list[tuple[int, dict[str, float]]] = []
        self.histograms: list[tuple[int, str, np.ndarray]] = []
        self.alerts: list[Alert] = []

    def log_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Append ``(step, {key: float(value)})``."""
        self._check_open()
        self.scalars.append((int(step), {str(k): float(v) for k, v in scalars.items()}))

    def log_histogram(self, step: int, key: str, values: Any, *, wall_time: float | None = None) -> None:
        """Append ``(step, key, values as a float64 array)``."""
        self._check_open()
        self.histograms.append((int(step), str(key), as_float_array(values)))

    def log_alert(self, alert: Alert) -> None:
        """Append the alert."""
        self._check_open()
        self.alerts.append(alert)

    def history(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one scalar key, in logging order (empty when never logged)."""
        return [(step, values[key]) for step, values in self.scalars if key in values]

    def last(self, key: str) -> float | None:
        """The latest value logged under ``key``, or ``None``."""
        for _, values in reversed(self.scalars):
            if key in values:
                return values[key]
        return None

    def keys(self) -> list[str]:
        """Every scalar key seen, in order of first appearance."""
        seen: dict[str, None] = {}
        for _, values in self.scalars:
            seen.update(dict.fromkeys(values))
        return list(seen)

    def __repr__(self) -> str:
        return (
            f"MemorySink(scalars={len(self.scalars)}, histograms={len(self.histograms)}, "
            f"alerts={len(self.alerts)}, closed={self._closed})"
        )
