"""Exceptions and warnings raised by spherewatch."""
from __future__ import annotations

__all__ = ["SpherewatchError", "CollapseWarning", "MonitorFault"]


class SpherewatchError(RuntimeError):
    """API misuse, or a failure inside the monitor when ``strict=True``."""


class CollapseWarning(UserWarning):
    """Emitted once for every collapse alert that fires (with ``warn=True``, the default; the warning *is* the
    delivery: no log line besides it), pointing at the user's line that called into spherewatch, so users can
    filter it or turn it into an error (raised from ``Monitor.step``, after the alert was recorded).

    Example::

        import warnings, spherewatch as sw
        warnings.simplefilter("error", sw.CollapseWarning)  # stop at the first alert
    """


class MonitorFault(UserWarning):
    """Emitted when the monitor itself fails (a capture, a metric, a sink) and carries on: not a statement about
    the embeddings. Reported once per part and kind of failure (see :mod:`spherewatch.faults`); ``warn=False``
    logs an ERROR line instead. Escalate it in tests with ``warnings.simplefilter("error", sw.MonitorFault)``."""
