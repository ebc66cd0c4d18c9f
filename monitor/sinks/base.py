"""The :class:`Sink` interface every metric destination implements, and small helpers shared by sinks.

The interface lives in :mod:`spherewatch.delivery.sink` (the delivery package delivers to it); it is importable here.
"""
from spherewatch.delivery.sink import Capabilities, Sink, as_float_array, capabilities
from spherewatch.keys import parse_key

__all__ = ["Capabilities", "Sink", "as_float_array", "capabilities", "split_key"]

#: ``(tap, metric)`` of a metric key of either key scheme, or ``None``: :func:`spherewatch.keys.parse_key`, under
#: the name the sinks exported before the key schemes existed.
split_key = parse_key
