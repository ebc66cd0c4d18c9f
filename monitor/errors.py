"""Exceptions and warnings raised by spherewatch."""
from __future__ import annotations

__all__ = ["SpherewatchError", "CollapseWarning"]


class SpherewatchError(RuntimeError):
    """API misuse, or a failure inside the monitor when ``strict=True``."""


class CollapseWarning(UserWarning):
    """Emitted for every fired alert, so users can filter it or turn it into an error.

    Example::

        import warnings, spherewatch as sw
        warnings.simplefilter("error", sw.CollapseWarning)  # stop at the first alert
    """
